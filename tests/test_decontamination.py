"""Decontamination: corpus images that are (altered copies of) benchmark images become `benchmark_overlap` rejects;
unrelated images pass. Hashes come from a real benchmark copy through a Dagster asset."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from PIL import Image

from dagster_project.assets import benchmark_hashes, fetched_shards, images, shards
from dagster_project.build import BuildRefused, build_corpus
from dagster_project.resources import resources_from
from datasets_builder import lake, storage
from datasets_builder.config import CorpusConfig, DecontaminationConfig, SourceConfig, load_corpus_config
from datasets_builder.corpus import Corpus
from datasets_builder.decontamination import find_overlaps, hash_benchmark_images
from odd_images import SAMPLES
from schemas.errors import ConfigError

BENCHMARK_PHOTO = SAMPLES / "astronaut.jpg"
UNRELATED = [SAMPLES / "coffee.jpg", SAMPLES / "brick.jpg", SAMPLES / "camera.jpg"]


def _altered(path: Path) -> bytes:
    """The photo cut 4 % on the left and top and 2 % on the right, resized to 60 %, re-encoded as JPEG quality 70."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    image = image.crop((round(0.04 * width), round(0.04 * height), width - round(0.02 * width), height))
    image = image.resize((image.width * 3 // 5, image.height * 3 // 5), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def _imgedit_copy(root: Path) -> Path:
    """An ImgEdit-Bench Basic copy (Benchmark.tar extracted) whose one photo is the benchmark photo."""
    folder = root / "Benchmark" / "singleturn"
    (folder / "animal").mkdir(parents=True)
    shutil.copy(BENCHMARK_PHOTO, folder / "animal" / "000342021.jpg")
    listing = {"1082": {"id": "animal/000342021.jpg", "prompt": "Make the sky green", "edit_type": "adjust"}}
    (folder / "singleturn.json").write_text(json.dumps(listing))
    return root


def test_altered_and_exact_copies_match_and_unrelated_photos_pass():
    hashes = hash_benchmark_images([("imgedit", "animal/000342021.jpg", BENCHMARK_PHOTO.read_bytes())])
    assert len(hashes) == 81  # every crop of 0, 3 or 6 % per side
    exact_id = hashlib.sha256(BENCHMARK_PHOTO.read_bytes()).hexdigest()
    corpus = [("altered", _altered(BENCHMARK_PHOTO)), (exact_id, BENCHMARK_PHOTO.read_bytes())]
    corpus += [(p.stem, p.read_bytes()) for p in UNRELATED]
    table = pa.table({"image_id": [i for i, _ in corpus], "image": [d for _, d in corpus]})
    found = find_overlaps(table, hashes)
    assert set(found) == {"altered", exact_id}
    assert found[exact_id] == "same bytes as imgedit/animal/000342021.jpg"
    assert found["altered"].startswith("looks like imgedit/animal/000342021.jpg (pHash ")


def test_the_benchmark_hashes_asset_feeds_the_images_step_which_rejects_the_copies(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "altered.jpg").write_bytes(_altered(BENCHMARK_PHOTO))
    shutil.copy(BENCHMARK_PHOTO, source / "same.jpg")
    for path in UNRELATED:
        shutil.copy(path, source / path.name)
    config = CorpusConfig(source=SourceConfig(folder=str(source)), work_dir=str(tmp_path / "work"),
                          lake_dir=str(tmp_path / "lake"),
                          decontamination=DecontaminationConfig({"imgedit": str(_imgedit_copy(tmp_path / "ImgEdit"))}))
    instance = dg.DagsterInstance.ephemeral()
    assets = [fetched_shards, benchmark_hashes, images]
    first = dg.materialize(assets, selection=["fetched_shards", "benchmark_hashes"], instance=instance,
                           resources=resources_from(config))
    assert first.asset_materializations_for_node("benchmark_hashes")[0].metadata["images_imgedit"].value == 1
    (shard,) = instance.get_dynamic_partitions(shards.name)
    dg.materialize(assets, selection=["images"], partition_key=shard, instance=instance, resources=resources_from(config))
    corpus = Corpus(config)
    name = corpus.images_name(shard)
    kept = storage.read_parquet(lake.staged_path(corpus.lake, "images", name), columns=["source"])
    rejected = storage.read_parquet(lake.staged_path(corpus.lake, "images_rejected", name)).to_pylist()
    assert sorted(Path(s).name for s in kept.column("source").to_pylist()) == sorted(p.name for p in UNRELATED)
    overlaps = {Path(r["source"]).name: r["detail"] for r in rejected if r["reason"] == "benchmark_overlap"}
    assert overlaps == {"same.jpg": "same bytes as imgedit/animal/000342021.jpg",
                        "altered.jpg": overlaps["altered.jpg"]}
    assert overlaps["altered.jpg"].startswith("looks like imgedit/animal/000342021.jpg")
    without = Corpus(CorpusConfig(source=config.source, work_dir=config.work_dir, lake_dir=config.lake_dir))
    assert without.images_name(shard) != name  # listing benchmarks re-decides a shard's images


def test_decontamination_settings_and_copies_fail_in_one_line(tmp_path):
    toml = tmp_path / "corpus.toml"
    toml.write_text(f'[source]\nfolder = "{SAMPLES}"\n\n[decontamination]\nbenchmarks = {{ geditt = "/x" }}\n')
    with pytest.raises(ConfigError, match="unknown benchmark 'geditt' \\(known: gedit, imgedit, dreambooth\\)"):
        load_corpus_config(toml)
    toml.write_text(f'[source]\nfolder = "{SAMPLES}"\n\n[decontamination]\n'
                    f'benchmarks = {{ gedit = "{tmp_path / "nowhere"}" }}\n')
    config = load_corpus_config(toml, {"work_dir": str(tmp_path / "work"), "lake_dir": str(tmp_path / "lake")})
    with pytest.raises(BuildRefused) as refused:
        build_corpus(config, on_event=lambda m: None, log_level="CRITICAL")
    assert "\n" not in str(refused.value) and "nowhere" in str(refused.value)
