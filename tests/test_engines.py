"""Where shard work runs. Locally, a shard's independent VLM stages overlap. On a real Ray cluster on loopback: a head and worker nodes started as separate `ray start` processes,
each with its own temp dir, the build driven by `build_corpus` (Dagster records the shards).

The VLM is the load-test server answering every stage's prompt validly after a delay (its answers do not depend on
the image, so both builds see the same text): the test is about where work runs, not what the VLM says.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from benchmarks.bench_vlm_server import LoadTestServer, stage_answer
from dagster_project.build import build_corpus
from datasets_builder import lake
from datasets_builder.config import BuildConfig, CorpusConfig, SourceConfig, VlmConfig
from datasets_builder.engines import RayUnavailable
from datasets_builder.fetch import FetchConfig
from datasets_builder.loopback import serving
from odd_images import SAMPLES

RAY = str(Path(sys.executable).parent / "ray")
# A dead node is noticed within ~2 s instead of the default ~30 s.
RAY_ENV = {**os.environ, "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
           "RAY_health_check_initial_delay_ms": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEMP_DIRS: list[str] = []


def _start_node(args: list[str], name: str) -> subprocess.Popen:
    """`ray start --block` in its own process group (killing the group kills the node: raylet and its workers), in a
    temp dir of its own (short: Ray's socket paths must fit in 107 characters)."""
    temp_dir = tempfile.mkdtemp(prefix=f"ray_{name}_", dir="/tmp")
    TEMP_DIRS.append(temp_dir)
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}", *args],
                            env=RAY_ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(node: subprocess.Popen) -> None:
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    node.wait(timeout=30)


def _wait_for_nodes(address: str, count: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run([RAY, "status", f"--address={address}"], env=RAY_ENV, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.count("node_") >= count:
            return
        time.sleep(1)
    raise TimeoutError(f"{count} Ray nodes did not join {address}")


def _config(root: Path, source: Path, url: str, max_in_flight: int = 8, **build) -> CorpusConfig:
    return CorpusConfig(source=SourceConfig(folder=str(source)), work_dir=str(root / "work"),
                        lake_dir=str(root / "lake"), fetch=FetchConfig(shard_size=4),
                        vlm=VlmConfig(backend="openai", model="load-test", base_url=f"{url}/v1",
                                      max_in_flight=max_in_flight),
                        build=BuildConfig(**build))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray_source")
    for path in sorted(SAMPLES.glob("*.jpg"))[:8]:  # 2 shards of 4 images
        shutil.copy(path, folder / path.name)
    return folder


def test_a_worker_killed_mid_shard_is_retried_and_the_snapshot_equals_a_one_machine_build(source, tmp_path):
    server = LoadTestServer(latency_s=0.4, capacity=64, answer=stage_answer)
    with serving(server.handler()) as url:
        local = build_corpus(_config(tmp_path / "local", source, url), tag="v1", on_event=lambda m: None)
        requests_one_build = server.served

        port = _free_port()
        address = f"127.0.0.1:{port}"
        # The head only coordinates (no CPUs for tasks): every shard runs on a worker node.
        head = _start_node(["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false"],
                           "head")
        first = _start_node([f"--address={address}", "--num-cpus=2"], "first")
        nodes = [head, first]
        try:
            _wait_for_nodes(address, 2)
            killed = threading.Event()

            def kill_the_worker_mid_shard() -> None:
                while server.served < requests_one_build + 6:  # the worker is inside the VLM stages of a shard
                    time.sleep(0.05)
                _kill(first)
                killed.set()
                nodes.append(_start_node([f"--address={address}", "--num-cpus=2"], "second"))

            threading.Thread(target=kill_the_worker_mid_shard, daemon=True).start()
            events: list[str] = []
            on_ray = build_corpus(_config(tmp_path / "ray", source, url, engine="ray", ray_address=address),
                                  tag="v1", on_event=events.append)
        finally:
            for node in reversed(nodes):
                _kill(node)
            for temp_dir in TEMP_DIRS:
                shutil.rmtree(temp_dir, ignore_errors=True)
    assert killed.is_set() and first.returncode is not None
    assert sum("done" in e for e in events) == 2, events
    assert server.served - requests_one_build < 2 * requests_one_build  # the killed shard's answers, not all again
    # Nothing lost or duplicated: the same files, bytes and rows as the one-machine build.
    assert on_ray["content_hash"] == local["content_hash"]
    assert {k: v for k, v in on_ray.items() if k.startswith("rows_")} == {
        k: v for k, v in local.items() if k.startswith("rows_")}
    ray_lake = lake.LakeConfig.of(str(tmp_path / "ray" / "lake"))
    assert lake.verify_content_hash(ray_lake, "v1")


def test_a_server_gets_the_independent_stages_of_a_shard_at_once(source, tmp_path):
    arrivals: list[tuple[float, str]] = []

    def answer(body: dict) -> str:
        arrivals.append((time.monotonic(), next(iter(body["response_format"]["json_schema"]["schema"]["properties"]))))
        return stage_answer(body)

    server = LoadTestServer(latency_s=0.5, capacity=64, answer=answer)
    with serving(server.handler()) as url:
        metadata = build_corpus(_config(tmp_path, source, url, max_in_flight=64, shards_in_flight=1), on_event=lambda m: None)
    first = {kind: min(t for t, k in arrivals if k == kind) for _, kind in arrivals}
    # caption, propose and object of the first shard went out together, before any of them was answered
    assert max(first["caption"], first["edits"], first["is_object_centric"]) - min(first.values()) < 0.4, first
    assert first["is_valid"] > first["caption"] + 0.4 and first["background_captions"] > first["is_object_centric"]
    # per image: caption, propose, object and (every image is object-centric here) background; per proposal: validate
    assert len(arrivals) == server.served == 4 * metadata["rows_captions"] + metadata["rows_edit_proposals"]


def test_the_ui_job_builds_every_shard_on_the_engine_and_records_its_partitions(source, tmp_path):
    import dagster as dg

    from dagster_project.definitions import ALL_ASSETS
    from dagster_project.engine_job import shards_on_engine_job
    from dagster_project.resources import resources_from

    server = LoadTestServer(latency_s=0.05, capacity=64, answer=stage_answer)
    config = _config(tmp_path, source, "unused")
    instance = dg.DagsterInstance.ephemeral()
    with serving(server.handler()) as url:
        config = dataclasses.replace(config, vlm=dataclasses.replace(config.vlm, base_url=f"{url}/v1"))
        resources = resources_from(config)
        dg.materialize(ALL_ASSETS, selection=["fetched_shards"], instance=instance, resources=resources)
        result = shards_on_engine_job(config.build).execute_in_process(instance=instance, resources=resources)
    keys = set(instance.get_dynamic_partitions("shards"))
    assert result.success and len(keys) == 2
    for asset in ("images", "captions", "edit_proposals", "edit_instructions", "objects", "background_prompts"):
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == keys, asset


def test_the_ui_job_config_has_every_build_field():
    from dagster_project.engine_job import EngineConfig

    assert set(EngineConfig.model_fields) == {f.name for f in dataclasses.fields(BuildConfig)}


def test_no_ray_cluster_is_a_one_line_error(source, tmp_path):
    config = dataclasses.replace(_config(tmp_path, source, "http://127.0.0.1:9"),
                                 build=BuildConfig(engine="ray", ray_address=f"127.0.0.1:{_free_port()}"))
    with pytest.raises(RayUnavailable, match="no Ray cluster at"):
        build_corpus(config, on_event=lambda m: None, log_level="CRITICAL")
