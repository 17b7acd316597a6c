"""Shared fixtures: the tiny model zoo is built once per test session into a temporary cache."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from model_zoo import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("zoo"), seed=0)


@pytest.fixture(scope="session")
def lake_dir(tmp_path_factory):
    """A lake holding the fixture snapshot (tag "fixture") that the trainer's tests read."""
    from snapshot_fixture import write_fixture_snapshot

    root = tmp_path_factory.mktemp("lake")
    write_fixture_snapshot(root)
    return root


@pytest.fixture(scope="session")
def zimage(tiny_models):
    from training.backbones import ZImageBackbone

    return ZImageBackbone.from_pretrained(tiny_models.generator)


@pytest.fixture(scope="session")
def vlm(tiny_models):
    from model_zoo.qwen_vl import load_vlm

    return load_vlm(tiny_models.vlm)


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server for catalog tests; skipped where none can run unless CI requires it."""
    from postgres_server import postgres_server

    server = postgres_server()
    try:
        running = server.__enter__()
    except (FileNotFoundError, RuntimeError) as error:
        if os.environ.get("NPEDIT_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL server here: {error}")
    yield running
    server.__exit__(None, None, None)


@pytest.fixture
def postgres_dsn(postgres):
    """An empty database of its own on the shared test server (one DuckLake catalog per test)."""
    return postgres.new_database()


@pytest.fixture(scope="session")
def s3_endpoint():
    from s3_server import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """An empty bucket; the AWS settings every process (DuckDB, pyarrow, subprocesses) reads point at the server."""
    import uuid

    import pyarrow.fs as pafs

    for key, value in dict(AWS_ACCESS_KEY_ID="npedit", AWS_SECRET_ACCESS_KEY="npedit-secret", AWS_REGION="us-east-1",
                           AWS_ENDPOINT_URL=s3_endpoint).items():
        monkeypatch.setenv(key, value)
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    host = s3_endpoint.split("://", 1)[1]
    pafs.S3FileSystem(endpoint_override=host, scheme="http", region="us-east-1", access_key="npedit",
                      secret_key="npedit-secret", allow_bucket_creation=True).create_dir(bucket)
    return bucket
