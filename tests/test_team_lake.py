"""A team's lake: the catalog in PostgreSQL, the files in object storage (S3 on loopback), shared by every process."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from dagster_project.build import build_corpus
from datasets_builder import lake, quality, stats, storage
from datasets_builder.config import CorpusConfig, SourceConfig, VlmConfig
from datasets_builder.corpus import Corpus
from datasets_builder.fetch import FetchConfig
from odd_images import SAMPLES
from snapshot_fixture import EDITS, write_fixture_snapshot
from training.config import DataConfig
from training.data import snapshot_batches

pytestmark = pytest.mark.slow


def _team_config(root: Path, dsn: str, model: Path, seed: int) -> CorpusConfig:
    folder = root / "source"
    if not folder.exists():
        folder.mkdir()
        for name in ("astronaut.jpg", "coffee.jpg", "rocket.jpg"):
            shutil.copy(SAMPLES / name, folder / name)
        (folder / "broken.jpg").write_bytes(b"<html>not an image</html>")
    return CorpusConfig(
        source=SourceConfig(folder=str(folder)), work_dir=str(root / "work"), lake_dir=str(root / "unused"),
        catalog=f"postgres:{dsn}", data_path=str(root / "shared_data") + "/", fetch=FetchConfig(shard_size=8),
        vlm=VlmConfig(model=str(model), seed=seed),
    )


def _npedit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npedit.cli", *args], capture_output=True, text=True, timeout=300)


def test_postgres_catalog_builds_serves_other_processes_and_replaces_a_configuration(tmp_path, postgres_dsn,
                                                                                      tiny_models):
    config = _team_config(tmp_path, postgres_dsn, tiny_models.vlm, seed=0)
    store = Corpus(config).lake
    assert store.catalog.startswith("postgres:") and not (tmp_path / "unused").exists()
    first = build_corpus(config, tag="v1", message="seed 0", on_event=lambda m: None)
    assert first["rows_images"] == 3 and first["rows_images_rejected"] == 1
    assert first["check_counts_add_up"] == "passed" and first["check_no_duplicate_keys"] == "passed"
    v1 = {t: sorted(map(str, lake.read_table(store, t, "v1").to_pylist())) for t in ("captions", "edit_proposals")}

    lake_args = ["--catalog", store.catalog, "--data-path", store.data_path]
    with lake.session(store):  # a writer holds the catalog; other processes still read it
        out = _npedit("corpus", "stats", *lake_args, "--snapshot", "v1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "proposals_per_edit_type" in out.stdout and "reject_reasons" in out.stdout

    other = replace(config, vlm=replace(config.vlm, seed=1))  # another sampling: new files, same images
    with pytest.raises(RuntimeError, match="publishing the snapshot failed: .*captions already holds 1 file.*--replace"):
        build_corpus(other, tag="v2", message="seed 1", on_event=lambda m: None)
    second = build_corpus(other, tag="v2", message="seed 1", replace=True, on_event=lambda m: None)
    assert second["rows_images"] == 3 and second["check_counts_add_up"] == "passed"
    for table in ("captions", "edit_proposals"):
        assert sorted(map(str, lake.read_table(store, table, "v1").to_pylist())) == v1[table], table
        samplings = set(lake.read_table(store, table, "v2", columns=["sampling"]).column(0).to_pylist())
        assert len(samplings) == 1 and '"seed": 1' in samplings.pop(), table
    assert lake.verify_content_hash(store, "v1") and lake.verify_content_hash(store, "v2")
    diff = {row[0]: (row[1], row[2]) for row in stats.snapshot_diff(store, "v1", "v2").rows}
    assert diff["images"] == (3, 3) and diff["captions"] == (3, 3)


def test_trainer_reads_a_snapshot_from_a_postgres_catalog(tmp_path, postgres_dsn):
    store = lake.LakeConfig(catalog=f"postgres:{postgres_dsn}", data_path=str(tmp_path / "data") + "/")
    write_fixture_snapshot(store, tag="team")
    data = DataConfig(lake_dir=str(tmp_path / "unused"), catalog=store.catalog, data_path=store.data_path,
                      snapshot="team", batch_size=3)
    batches = snapshot_batches(data, seed=0)
    batch = next(iter(batches))
    assert len(batch.instructions) == 3 and batch.references.shape[0] == 3
    assert set(batch.instructions) <= {instruction for _, _, instruction, _ in EDITS}


def _objects(bucket: str, prefix: str) -> list[str]:
    fs, _ = storage.filesystem(f"s3://{bucket}/{prefix}")
    selector = pafs.FileSelector(f"{bucket}/{prefix}", recursive=True, allow_not_found=True)
    return sorted(info.path for info in fs.get_file_info(selector) if info.path.endswith(".parquet"))


def test_object_storage_data_path_with_a_postgres_catalog(tmp_path, postgres_dsn, s3_bucket, tiny_models):
    config = replace(_team_config(tmp_path, postgres_dsn, tiny_models.vlm, seed=0),
                     data_path=f"s3://{s3_bucket}/corpus/")
    store = Corpus(config).lake
    metadata = build_corpus(config, tag="v1", message="into object storage", on_event=lambda m: None)
    assert metadata["rows_images"] == 3 and metadata["rows_images_rejected"] == 1
    assert metadata["check_counts_add_up"] == "passed" and metadata["check_schema_valid"] == "passed"
    assert not list(tmp_path.rglob("staged")), "staged files must go to the bucket, not the local disk"
    with lake.session(store, read_only=True) as con:
        registered = [f for t in lake.CORPUS_TABLES for f in lake.registered_files(con, t)]
    assert registered and all(f.startswith(f"s3://{s3_bucket}/corpus/main/") for f in registered)
    assert {f.removeprefix("s3://") for f in registered} <= set(_objects(s3_bucket, "corpus"))
    assert lake.verify_content_hash(store, "v1")
    assert lake.read_table(store, "captions", "v1").num_rows == 3

    out = _npedit("corpus", "stats", "--catalog", store.catalog, "--data-path", store.data_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "validity_per_edit_type" in out.stdout
    init = stats.write_cli_init(store, tmp_path / "init.sql")
    assert "npedit-secret" not in init.read_text()  # credentials stay in the environment
    cli = subprocess.run([str(Path(sys.executable).parent / "duckdb"), "-init", str(init), "-csv", "-c",
                          "SELECT count(*) FROM images"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert cli.stdout.strip().splitlines()[-1] == "3"


def test_trainer_reads_the_same_batches_from_object_storage(tmp_path, s3_bucket):
    local = write_fixture_snapshot(tmp_path / "local", tag="team")
    remote = write_fixture_snapshot(
        lake.LakeConfig(catalog=f"sqlite:{tmp_path / 'catalog.sqlite'}", data_path=f"s3://{s3_bucket}/fixture/"),
        tag="team")
    assert lake.resolve(remote, "team").content_hash == lake.resolve(local, "team").content_hash
    batches = {}
    for name, store in (("local", local), ("remote", remote)):
        data = DataConfig(lake_dir=str(tmp_path / "unused"), catalog=store.catalog, data_path=store.data_path,
                          snapshot="team", batch_size=2)
        batches[name] = list(itertools.islice(iter(snapshot_batches(data, seed=3)), 3))
    for a, b in zip(batches["local"], batches["remote"], strict=True):
        assert a.instructions == b.instructions and torch.equal(a.references, b.references)


def test_an_unreachable_catalog_or_missing_lake_is_one_clear_line(tmp_path):
    down = _npedit("corpus", "stats", "--catalog", "postgres:dbname=x host=127.0.0.1 port=1 user=postgres",
                   "--lake-dir", str(tmp_path / "lake"))
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert down.stderr.startswith("npedit: error: cannot open the lake (catalog postgres:") and "port 1" in down.stderr
    missing = _npedit("corpus", "stats", "--lake-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no corpus lake at" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "lake").exists() and not (tmp_path / "nowhere").exists()  # reading creates nothing


WORKER = """
import json, sys
from schemas.dataclass_io import from_dict
from datasets_builder.config import CorpusConfig
from datasets_builder.corpus import STAGE_OUTPUT, Corpus
corpus = Corpus(from_dict(CorpusConfig, json.loads(sys.argv[1]), "worker"))
runner = corpus.runner()
for shard in sys.argv[2:]:
    corpus.build_images(shard)
    for stage in STAGE_OUTPUT:
        corpus.run_stage(stage, shard, runner)
"""


def test_two_machines_split_one_build_through_postgres_and_object_storage(tmp_path, postgres_dsn, s3_bucket,
                                                                          tiny_models):
    folder = tmp_path / "source"
    folder.mkdir()
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(SAMPLES / name, folder / name)
    shutil.copy(SAMPLES / "astronaut.jpg", folder / "d_astronaut_again.jpg")  # same bytes, in shard 1
    base = replace(_team_config(tmp_path, postgres_dsn, tiny_models.vlm, seed=0),
                   source=SourceConfig(folder=str(folder)), fetch=FetchConfig(shard_size=2),
                   data_path=f"s3://{s3_bucket}/corpus/", fetched_dir=f"s3://{s3_bucket}/fetched/")
    machines = {name: replace(base, work_dir=str(tmp_path / name)) for name in ("a", "b", "c")}
    shards = Corpus(machines["a"]).fetch()  # machine a fetches into the bucket
    assert len(shards) == 3 and not list((tmp_path / "a").rglob("[0-9]*.parquet"))  # uploaded, local copies dropped
    assert Corpus(machines["b"]).shards() == shards  # machine b sees them without fetching
    assert Corpus(machines["b"]).fetch() == shards and not list((tmp_path / "b").rglob("[0-9]*.parquet"))

    def worker(machine: str, mine: list[str]) -> subprocess.Popen:
        config = json.dumps(asdict(machines[machine]))
        return subprocess.Popen([sys.executable, "-c", WORKER, config, *mine], stderr=subprocess.PIPE, text=True)

    running = [worker("a", [shards[0]]), worker("b", shards[1:])]  # each starts with a shard holding a copy
    for process in running:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    publisher = Corpus(machines["c"])
    published = publisher.publish(message="two machines", tag="v1")
    assert published.row_counts["images"] == 4 and published.row_counts["images_rejected"] == 1
    rejected = lake.read_table(publisher.lake, "images_rejected", "v1").to_pylist()
    assert rejected[0]["reason"] == "duplicate" and "same bytes as" in rejected[0]["detail"]
    assert quality.no_duplicate_keys(publisher.lake, "v1").passed
    assert quality.counts_add_up(publisher.lake, publisher.fetched_path, "v1").passed
    assert not (tmp_path / "c" / "state.sqlite").exists()  # the claims live in PostgreSQL


PUBLISH = """
import json, sys, time
from datasets_builder import lake
catalog, data_path, files, start_at = sys.argv[1:]
while time.time() < float(start_at):
    time.sleep(0.001)
print(lake.publish(lake.LakeConfig(catalog, data_path), json.loads(files), message="racer").snapshot_id)
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_machines_publishing_at_once_register_each_file_once(tmp_path, kind, request):
    from schemas import IMAGES_REJECTED

    catalog = f"sqlite:{tmp_path / 'catalog.sqlite'}" if kind == "sqlite" else \
        f"postgres:{request.getfixturevalue('postgres_dsn')}"
    store = lake.LakeConfig(catalog, str(tmp_path / "data"))
    rows = [dict(source=f"http://x/{i}.jpg", shard="s", reason="http_error", detail="404") for i in range(3)]
    files = {"images_rejected": [lake.write_staged(store, IMAGES_REJECTED, IMAGES_REJECTED.to_arrow(rows[i:i + 1]),
                                                   f"s-{i}") for i in range(3)]}
    start_at = time.time() + 4
    racers = [subprocess.Popen([sys.executable, "-c", PUBLISH, store.catalog, store.data_path, json.dumps(files),
                                str(start_at)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    for process in racers:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    with lake.session(store, read_only=True) as con:
        registered = lake.registered_files(con, "images_rejected")
    assert registered == sorted(files["images_rejected"])
    assert lake.read_table(store, "images_rejected").num_rows == 3
    assert len(lake.published_snapshots(store)) == 1  # the second publisher found nothing new
