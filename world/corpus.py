"""The world corpus from the real builder: world scenes rendered and served on loopback, fetched by img2dataset,
answered by the world oracle (or a learned builder VLM), published as a DuckLake snapshot the trainer reads.

`build_world_corpus` runs exactly what `npedit corpus build` runs (`dagster_project.build.build_corpus`) on a config
built here. Images are 64 px PNGs, which pass the builder's default limits (`min_side` 32, stored unresized as JPEG).
The URL list keeps its loopback port, so a rerun serves the same URLs and the builder resumes (finished shards and
stages are skipped, and a finished build publishes nothing new).
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import polars as pl

from datasets_builder import lake, quality
from datasets_builder.config import CorpusConfig, SourceConfig, VlmConfig
from datasets_builder.fetch import FetchConfig
from datasets_builder.loopback import QuietHandler, serving
from schemas.errors import ConfigError
from world.builder_answers import scene_caption
from world.oracle import ORACLE_MODEL, serve_oracle
from world.scene import Scene, object_centric_scene, random_scene, render

# One object-centric scene, then ordinary random scenes of 1, 2, 3, 2, 3 objects: a third of the scenes cannot take an
# insertion (three objects) and a third cannot take a removal (one object), so neither edit type falls far behind.
SCENE_CYCLE = ("object-centric", 1, 2, 3, 2, 3)
SHARD_SIZE = 500


CENTRIC_PATIENCE = 10_000  # object-centric draws in a row that repeat a scene before none is thought left (of 448)


def world_scenes(n: int, seed: int = 0) -> list[Scene]:
    """n distinct scenes (no two alike in what a caption says), in `SCENE_CYCLE`'s mix until the few object-centric
    scenes run out (their turns then take two objects); a seed's first n scenes are the same whatever n."""
    rng, scenes, seen, centric_left = random.Random(seed), [], set(), True
    while len(scenes) < n:
        kind = SCENE_CYCLE[len(scenes) % len(SCENE_CYCLE)] if centric_left else 2
        if kind == "object-centric":
            scene = next((s for s in (object_centric_scene(rng) for _ in range(CENTRIC_PATIENCE))
                          if s.key() not in seen), None)
            centric_left = scene is not None
            if scene is None:
                continue
        else:
            scene = random_scene(rng)
            while len(scene.objects) != kind:
                scene = random_scene(rng)
        if scene.key() not in seen:
            seen.add(scene.key())
            scenes.append(scene)
    return scenes


WORLD_IMAGE = re.compile(r"world-(?P<seed>\d+)-(?P<index>\d+)\.png$")  # the name of scene `index` of a seed


def write_images(folder: Path, scenes: list[Scene], seed: int) -> list[tuple[str, str]]:
    """Each scene's render as `folder/world-<seed>-<i>.png` (written once); returns (file name, true caption)."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    for i, scene in enumerate(scenes):
        name = f"world-{seed}-{i:06d}.png"
        if not (folder / name).exists():
            render(scene).save(folder / name)
        listed.append((name, scene_caption(scene)))
    return listed


def serve_folder(folder: Path, port: int = 0):
    """Serve `folder` on loopback at `port` (0: a free one) for a `with` block, which gets the base URL."""
    try:
        return serving(functools.partial(QuietHandler, directory=str(folder)), port)
    except OSError as error:
        raise ConfigError(f"cannot serve the world images on 127.0.0.1:{port}, the port of this corpus's URL list "
                          f"({error}); free the port or build into a new --out") from None


def _recorded_port(urls: Path) -> int:
    """The port an earlier build of this folder served its images on (0: none yet)."""
    if not urls.exists():
        return 0
    first = pl.read_csv(urls)["url"].head(1).to_list()
    return (urlsplit(first[0]).port or 0) if first else 0


def world_corpus_config(out: Path, urls: Path, vlm: VlmConfig, shard_size: int = SHARD_SIZE) -> CorpusConfig:
    """The builder's config for a world corpus under `out`: the lake is `out` itself (its catalog and `data/`, so
    `data.lake_dir=out` trains on it), the builder's work dir `out/work`."""
    return CorpusConfig(source=SourceConfig(url_list=str(urls)), work_dir=str(out / "work"), lake_dir=str(out),
                        fetch=FetchConfig(shard_size=shard_size, processes=1, threads=8), vlm=vlm)


def builder_vlm(vlm: str, base_url: str = "", device: str = "cpu") -> VlmConfig:
    """'oracle': the world oracle at `base_url` through the openai backend; else a saved builder VLM's folder,
    through the transformers backend."""
    if vlm == "oracle":
        return VlmConfig(backend="openai", model=ORACLE_MODEL, base_url=base_url, batch_size=32)
    if not Path(vlm).is_dir():
        raise ConfigError(f"--vlm must be 'oracle' or a saved builder VLM folder; {vlm} is neither")
    return VlmConfig(backend="transformers", model=str(Path(vlm).resolve()), device=device,
                     dtype="bfloat16" if device.startswith("cuda") else "float32")


@dataclass(frozen=True)
class WorldCorpus:
    """A finished build: the builder's snapshot metadata, its lake, and the timing."""

    metadata: dict
    store: lake.LakeConfig
    images: int
    seconds: float

    @property
    def snapshot_id(self) -> int:
        return self.metadata["snapshot_id"]


def build_world_corpus(out: Path, images: int, *, vlm: str = "oracle", seed: int = 0, tag: str | None = None,
                       device: str = "cpu", shard_size: int = SHARD_SIZE,
                       on_event: Callable[[str], None] = print) -> WorldCorpus:
    """Render `images` world scenes into `out/images`, serve them and the oracle on loopback, and run the corpus
    build on them into the lake at `out`; a rerun resumes and publishes nothing new once finished."""
    from dagster_project.build import build_corpus

    out = Path(out).resolve()
    started = time.perf_counter()
    listed = write_images(out / "images", world_scenes(images, seed), seed)
    urls = out / "urls.csv"
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(serve_folder(out / "images", _recorded_port(urls)))
        pl.DataFrame({"url": [f"{base}/{name}" for name, _ in listed], "caption": [c for _, c in listed]}) \
            .write_csv(urls)
        base_url = stack.enter_context(serve_oracle()) if vlm == "oracle" else ""
        config = world_corpus_config(out, urls, builder_vlm(vlm, base_url, device), shard_size)
        metadata = build_corpus(config, message=f"world corpus: {images} images, seed {seed}, vlm {vlm}", tag=tag,
                                on_event=on_event)
    store = lake.LakeConfig.of(config.lake_dir, config.catalog, config.data_path)
    return WorldCorpus(metadata, store, images, time.perf_counter() - started)


def corpus_summary(store: lake.LakeConfig, snapshot: int | str | None = None) -> dict:
    """Rows per table, proposals per edit type and the validity rate at a snapshot, with the builder's own
    balance and validity checks."""
    balance = quality.edit_type_balance(store, snapshot)
    validity = quality.validity_rate_in_band(store, snapshot)
    rows = lake.resolve(store, snapshot).row_counts
    counts = {k: v for k, v in balance.facts.items() if k != "max_min_ratio"}
    return {"rows": rows, "edit_types": counts, "max_min_ratio": balance.facts["max_min_ratio"],
            "balanced": balance.passed, "validity_rate": validity.facts["validity_rate"],
            "validity_in_band": validity.passed}
