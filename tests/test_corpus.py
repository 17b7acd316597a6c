"""The whole corpus graph, materialized in process with Dagster and the tiny VLM into a temporary DuckLake."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from dagster_project.build import build_corpus
from datasets_builder import lake, quality, stats, storage
from datasets_builder.config import CorpusConfig, SourceConfig, VlmConfig, load_corpus_config
from datasets_builder.corpus import Corpus
from datasets_builder.fetch import FetchConfig
from odd_images import SAMPLES, odd_files
from schemas import VlmStage
from schemas.errors import ConfigError

pytestmark = pytest.mark.slow
SHARD_SIZE = 6
BROKEN = {n: reason for n, (_, reason) in odd_files().items() if reason not in ("ok", "duplicate")}


def _source_folder(root: Path) -> Path:
    folder = root / "source"
    folder.mkdir()
    for path in SAMPLES.glob("*.jpg"):
        shutil.copy(path, folder / path.name)
    for name, (data, _) in odd_files().items():
        (folder / f"odd_{name}").write_bytes(data)
    return folder


def _toml(root: Path, folder: Path, model: Path) -> Path:
    path = root / "corpus.toml"
    path.write_text(
        f'work_dir = "{root / "work"}"\nlake_dir = "{root / "lake"}"\n\n[source]\nfolder = "{folder}"\n\n'
        f"[fetch]\nshard_size = {SHARD_SIZE}\n\n[vlm]\nmodel = \"{model}\"\nbatch_size = 8\n"
    )
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("corpus")
    folder = _source_folder(root)
    config = load_corpus_config(_toml(root, folder, tiny_models.vlm))
    metadata = build_corpus(config, tag="v1", message="first build", on_event=lambda m: None)
    return root, folder, config, metadata


def test_every_asset_materializes_and_checks_run(built):
    _, folder, config, metadata = built
    corpus = Corpus(config)
    n_files = len(list(folder.iterdir()))
    assert metadata["tag"] == "v1" and metadata["unfinished_shards"] == 0
    assert metadata["rows_images"] + metadata["rows_images_rejected"] == n_files
    for check in ("schema_valid", "no_duplicate_keys", "counts_add_up"):
        assert metadata[f"check_{check}"] == "passed", check
    assert metadata["rows_captions"] == metadata["rows_images"] == metadata["rows_objects"]
    assert metadata["rows_edit_instructions"] + sum(
        1 for r in lake.read_table(corpus.lake, "vlm_rejects", "v1").to_pylist() if r["stage"] == "validate"
    ) == metadata["rows_edit_proposals"]
    assert "| edit_type | instruction |" in metadata["preview"]


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_models):
    """A small folder (3 photos, files the builder does not read) built and published as v1."""
    root = tmp_path_factory.mktemp("small")
    folder = root / "source"
    (folder / ".thumbnails").mkdir(parents=True)
    for name in ("coffee.jpg", "rocket.jpg", "cat.jpg"):
        shutil.copy(SAMPLES / name, folder / name)
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>')
    (folder / "notes.txt").write_text("shot on a phone")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / ".thumbnails" / "coffee.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes())
    toml = _toml(root, folder, tiny_models.vlm)
    metadata = build_corpus(load_corpus_config(toml), tag="v1", message="small", on_event=lambda m: None)
    return folder, toml, metadata


def test_every_file_of_a_folder_is_an_image_or_a_reject(small):
    folder, toml, metadata = small
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) == 7
    assert metadata["rows_images"] == 3
    assert metadata["rows_images"] + metadata["rows_images_rejected"] == len(files)
    assert metadata["check_counts_add_up"] == "passed" and metadata["check_no_duplicate_keys"] == "passed"
    store = Corpus(load_corpus_config(toml)).lake
    rejected = {r["source"].removeprefix(folder.resolve().as_uri() + "/"): r
                for r in lake.read_table(store, "images_rejected", "v1").to_pylist()}
    assert sorted(rejected) == [".DS_Store", ".thumbnails/coffee.jpg", "logo.svg", "notes.txt"]
    assert {r["reason"] for r in rejected.values()} == {"unsupported"}
    assert "'.svg'" in rejected["logo.svg"]["detail"] and "'.txt'" in rejected["notes.txt"]["detail"]
    assert "hidden" in rejected[".DS_Store"]["detail"] and "hidden" in rejected[".thumbnails/coffee.jpg"]["detail"]


def test_rerunning_a_finished_build_with_its_tag_publishes_nothing(small, capfd):
    from npedit.cli import main

    _, toml, metadata = small
    store = Corpus(load_corpus_config(toml)).lake
    before = lake.published_snapshots(store).column("snapshot_id").to_pylist()
    capfd.readouterr()
    assert main(["corpus", "build", "--config", str(toml), "--tag", "v1"]) == 0
    out, err = capfd.readouterr()
    assert f"snapshot v1 (id {metadata['snapshot_id']}) already holds this content; nothing to publish" in out
    assert "Traceback" not in out + err and "Stack Trace" not in out + err and "error" not in (out + err).lower()
    assert lake.published_snapshots(store).column("snapshot_id").to_pylist() == before


def test_a_taken_tag_over_other_content_is_one_line_and_exit_2(small, tmp_path, capfd):
    from npedit.cli import main

    folder, toml, metadata = small
    more = tmp_path / "more"
    more.mkdir()
    pixels = np.random.default_rng(11).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(more / "new.png")
    other = tmp_path / "other.toml"  # the same work dir and lake, another folder: a v1 build with more content
    other.write_text(toml.read_text().replace(f'folder = "{folder}"', f'folder = "{more}"'))
    store = Corpus(load_corpus_config(toml)).lake
    before = lake.published_snapshots(store).column("snapshot_id").to_pylist()
    capfd.readouterr()
    assert main(["corpus", "build", "--config", str(other), "--tag", "v1"]) == 2
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Stack Trace" not in out + err
    errors = [line for line in (out + err).splitlines() if "error" in line.lower()]  # beside img2dataset's output
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], out + err
    assert errors[0].startswith(f"npedit: error: publishing the snapshot failed: tag 'v1' already names snapshot "
                                f"{metadata['snapshot_id']}, which holds other content"), errors[0]
    assert lake.published_snapshots(store).column("snapshot_id").to_pylist() == before


def test_reject_reasons_are_recorded(built):
    _, folder, config, _ = built
    rejected = lake.read_table(Corpus(config).lake, "images_rejected", "v1").to_pylist()
    by_file = {Path(r["source"]).name: r["reason"] for r in rejected}
    for name, reason in BROKEN.items():
        assert by_file[f"odd_{name}"] == reason, name
    duplicates = [r for r in rejected if r["reason"] == "duplicate"]
    # astronaut.jpg == odd_good.jpg == odd_good_copy.jpg, cat.jpg == chelsea.jpg: 3 duplicates in all, any shards
    assert len(duplicates) == 3 and all(r["image_id"] and "same bytes as" in r["detail"] for r in duplicates)


def test_images_go_to_the_vlm_at_the_configured_size_encoded_once_per_shard(built):
    _, _, config, _ = built
    corpus = Corpus(config)
    shard = corpus.shards()[0]
    stored = lake.staged_path(corpus.lake, "images", corpus.images_name(shard))
    assert (corpus.work_dir / "vlm_images" / f"{corpus.images_name(shard)}-512.parquet").exists()  # the build made it
    small = Corpus(replace(config, vlm=replace(config.vlm, max_image_side=96)))
    view = small.vlm_images(shard)
    path = small.work_dir / "vlm_images" / f"{small.images_name(shard)}-96.parquet"
    made = path.stat().st_mtime_ns
    assert view.column("image_id").to_pylist() == storage.read_parquet(stored).column("image_id").to_pylist()
    assert all(max(Image.open(io.BytesIO(b)).size) == 96 for b in view.column("image").to_pylist())
    assert small.vlm_images(shard).equals(view) and path.stat().st_mtime_ns == made  # reused, not re-encoded
    stage = VlmStage.CAPTION
    assert small.stage_fingerprint(stage, small.runner()) != corpus.stage_fingerprint(stage, corpus.runner())


def test_stats_answer_the_users_questions(built):
    _, _, config, metadata = built
    store = Corpus(config).lake
    results = {r.name: r for r in stats.snapshot_stats(store, "v1")}
    assert sum(n for _, n in results["proposals_per_edit_type"].rows) == metadata["rows_edit_proposals"]
    judged = sum(r[1] for r in results["validity_per_edit_type"].rows)
    assert judged == metadata["rows_edit_instructions"]
    reasons = {(k, r): n for k, r, n in results["reject_reasons"].rows}
    assert reasons[("image", "duplicate")] == 3 and reasons[("image", "decode_error")] == 3
    assert [row[2] for row in results["rows_per_snapshot"].rows] == ["v1"]
    init = stats.write_cli_init(store, config_path := Path(config.work_dir) / "init.sql")
    cli = Path(sys.executable).parent / "duckdb"
    out = subprocess.run([str(cli), "-init", str(init), "-csv", "-c",
                          "SELECT count(*) FROM edit_proposals"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(metadata["rows_edit_proposals"])
    assert config_path.exists()


def test_definitions_load_with_every_asset_and_check():
    from dagster_project.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"fetched_shards", "benchmark_hashes", "images", "captions", "edit_proposals", "edit_instructions",
                    "objects", "background_prompts", "snapshot"}
    assert len(list(graph.asset_check_keys)) == 5
    assert defs.get_job_def("shards_on_engine") is not None


def test_ui_settings_bound_runs_and_model_holding_steps(tmp_path):
    from dagster_project.definitions import defs
    from dagster_project.instance import ensure_instance_settings

    home = tmp_path / "dagster_home"
    ensure_instance_settings(home)
    limits = dg.DagsterInstance.from_config(str(home)).get_concurrency_config()
    assert limits.pool_config.default_pool_limit == 1 and limits.run_queue_config.max_concurrent_runs == 4
    graph = defs.resolve_asset_graph()
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.get_all_asset_keys()}
    assert pools["snapshot"] == {"lake_writer"} and pools["images"] == {"images"}
    assert all(pools[t] == {"vlm"} for t in ("captions", "edit_proposals", "edit_instructions", "objects",
                                             "background_prompts"))
    server_limits = {p.name: p.limit for p in dg.DagsterInstance.from_config(str(home)).event_log_storage
                     .get_pool_limits()}
    assert server_limits["vlm_server"] == 4  # steps that only send requests to a shared server: several at once
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 3\n")
    instance = dg.DagsterInstance.from_config(str(home))
    instance.event_log_storage.set_concurrency_slots("vlm_server", 16)
    ensure_instance_settings(home)  # the user's settings are kept
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 3
    assert {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}["vlm_server"] == 16


def test_stages_that_only_call_a_server_share_the_server_pool():
    from dagster_project.assets import stage_assets, vlm_pool

    assert vlm_pool("transformers") == vlm_pool("vllm") == "vlm" and vlm_pool("openai") == "vlm_server"
    assert all(asset.op.pool == "vlm_server" for asset in stage_assets(vlm_pool("openai")))


def _rows(store, version, table, key):
    return sorted(r[key] for r in lake.read_table(store, table, version).to_pylist())


def test_killed_build_resumes_to_the_same_rows_without_duplicates(built, tmp_path, tiny_models):
    _, folder, config, _ = built
    toml = _toml(tmp_path, folder, tiny_models.vlm)
    command = [sys.executable, "-m", "npedit.cli", "corpus", "build", "--config", str(toml), "--tag", "v1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    output = tmp_path / "build.log"
    with output.open("wb") as log:
        process = subprocess.Popen(command, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    staged = tmp_path / "lake" / "data" / "main" / "edit_instructions" / "staged"
    deadline = time.time() + 600  # generous: on a loaded 2-core machine the first shard took over 4 min
    while time.time() < deadline and not list(staged.glob("*.parquet")) and process.poll() is None:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):  # the build may have ended on its own
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert list(staged.glob("*.parquet")), ("the build never reached the first shard's instructions; its output "
                                            f"ended:\n{output.read_text(errors='replace')[-3000:]}")
    resumed_config = load_corpus_config(toml)
    corpus = Corpus(resumed_config)
    assert len(list(staged.glob("*.parquet"))) < len(corpus.shards()), "killed too late to test a resume"
    build_corpus(resumed_config, tag="v1", message="resumed", on_event=lambda m: None)
    clean, resumed = Corpus(config).lake, corpus.lake
    for table, key in (("images", "image_id"), ("images_rejected", "source"), ("captions", "image_id"),
                       ("edit_proposals", "proposal_id"), ("edit_instructions", "proposal_id"),
                       ("objects", "image_id"), ("vlm_rejects", "request_hash")):
        assert _rows(resumed, "v1", table, key) == _rows(clean, "v1", table, key), table
    assert quality.no_duplicate_keys(resumed, "v1").passed
    with lake.session(resumed, read_only=True) as con:
        registered = [f for t in lake.CORPUS_TABLES for f in lake.registered_files(con, t)]
    assert registered and all(f.endswith(".parquet") and ".tmp-" not in f for f in registered)


def test_a_second_source_publishes_v2_and_v1_never_changes(built, tmp_path):
    _, _, config, _ = built
    store = Corpus(config).lake
    before = {t: lake.read_table(store, t, "v1").to_pylist() for t in ("images", "edit_instructions")}
    extra = tmp_path / "more"
    extra.mkdir()
    for name in ("coffee.jpg", "rocket.jpg"):  # already in v1: duplicates across sources
        shutil.copy(SAMPLES / name, extra / name)
    pixels = np.random.default_rng(7).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(extra / "new.png")
    second = CorpusConfig(source=SourceConfig(folder=str(extra)), work_dir=config.work_dir,
                          lake_dir=config.lake_dir, fetch=FetchConfig(shard_size=SHARD_SIZE), vlm=config.vlm)
    metadata = build_corpus(second, tag="v2", message="more images", on_event=lambda m: None)
    assert metadata["rows_images"] == len(before["images"]) + 1
    assert metadata["check_counts_add_up"] == "passed" and metadata["check_no_duplicate_keys"] == "passed"
    for table, rows in before.items():
        assert lake.read_table(store, table, "v1").to_pylist() == rows, table
    diff = {row[0]: (row[1], row[2]) for row in stats.snapshot_diff(store, "v1", "v2").rows}
    assert diff["images"] == (len(before["images"]), len(before["images"]) + 1)
    assert diff["images_rejected"][1] == diff["images_rejected"][0] + 2


BAD_CONFIGS = [  # (TOML, the error, its message)
    ('[source]\nfolder = "x"\nurl_list = "y"\n', ValueError, "exactly one of url_list or folder"),
    ('[source]\nfolder = "x"\n[vlm]\nbackend = "magic"\n', ValueError, "vlm.backend must be"),
    ('[source]\nfolder = "x"\n[fetch]\nshards = 3\n', ValueError, "unknown key 'shards'"),
    ('[source\nfolder = "x"\n', ConfigError, "not valid TOML"),
    ('work_dir = "w"\n', ValueError, r"a \[source\] table"),
    ('[source]\nfolder = "x"\n[vlm]\nmax_image_side = -1\n', ConfigError, "vlm.max_image_side must be 0"),
    ('[source]\nfolder = "x"\n[build]\nengine = "spark"\n', ConfigError,
     "build.engine must be local or ray, not 'spark'"),
    ('[source]\nfolder = "x"\n[build]\nshards_in_flight = -2\n', ConfigError, "build.shards_in_flight must be 0"),
]


def test_bad_configs_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, error, message in BAD_CONFIGS:
        bad.write_text(text)
        with pytest.raises(error, match=message):
            load_corpus_config(bad)
    bad.write_text('fetched_dir = "gs://bucket/x"\n[source]\nfolder = "x"\n')
    with pytest.raises(ConfigError, match="object storage must be one of s3://"):
        Corpus(load_corpus_config(bad)).shards()
    with pytest.raises(ValueError):
        VlmConfig(batch_size=0)
    _ = dg  # dagster is imported by the graph under test


def _perturbed(instance):
    """A copy of a config dataclass with every field changed from its default (nested dataclasses too)."""
    import dataclasses

    changes = {}
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if f.name == "build":  # where shard work runs: the CLI build's alone, not part of the corpus
            continue
        if dataclasses.is_dataclass(value):
            changes[f.name] = _perturbed(value)
        elif isinstance(value, bool):
            changes[f.name] = not value
        elif isinstance(value, int | float):
            changes[f.name] = value + 1
        elif f.name == "backend":
            changes[f.name] = "openai"
        elif isinstance(value, str) or value is None:
            changes[f.name] = f"{value or ''}changed"
    if isinstance(instance, SourceConfig):
        changes["folder"] = None
    return dataclasses.replace(instance, **changes)


def test_dagster_resources_carry_every_config_field_both_ways():
    from dagster_project.resources import corpus_from, resources_from

    default = CorpusConfig(source=SourceConfig(folder="images"))
    changed = _perturbed(default)
    assert changed.vlm != default.vlm and changed.limits != default.limits and changed.fetch != default.fetch
    for config in (default, changed):
        assert corpus_from(**resources_from(config)).config == config
