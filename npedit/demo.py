"""`npedit demo`: the main job on embedded defaults (sample photos shipped in the repo, tiny models).

Steps: build the tiny models -> serve the sample photos on loopback and build a corpus with img2dataset + the tiny
VLM -> publish a snapshot and print its stats -> train the editor a few steps from the snapshot (VLM feedback + DMD)
-> edit snapshot images with the trained checkpoint and write a PNG grid.
"""

from __future__ import annotations

import io
import shutil
from importlib import resources
from pathlib import Path

import polars as pl
import torch
from PIL import Image
from rich.console import Console


def sample_image_paths() -> list[Path]:
    """The JPEGs shipped in `datasets_builder/sample_images` (real photos from scikit-image's data set)."""
    folder = resources.files("datasets_builder").joinpath("sample_images")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".jpg"))


def build_demo_corpus(out_dir: Path, console: Console) -> tuple:
    """Serve the sample photos (+ one missing URL) on 127.0.0.1 and build a corpus snapshot from the URL list."""
    from dagster_project.build import build_corpus
    from datasets_builder.config import CorpusConfig, SourceConfig, VlmConfig
    from datasets_builder.fetch import FetchConfig
    from datasets_builder.lake import LakeConfig
    from datasets_builder.loopback import serve_directory

    photos = sample_image_paths()
    with serve_directory(photos[0].parent) as base:
        url_list = out_dir / "urls.csv"
        urls = [f"{base}/{p.name}" for p in photos] + [f"{base}/missing.jpg"]
        pl.DataFrame({"url": urls, "caption": [p.stem for p in photos] + [None]}).write_csv(url_list)
        config = CorpusConfig(
            source=SourceConfig(url_list=str(url_list)),
            work_dir=str(out_dir / "corpus_work"),
            lake_dir=str(out_dir / "corpus_lake"),
            fetch=FetchConfig(shard_size=8),
            vlm=VlmConfig(temperature=1.0, seed=0),
        )
        metadata = build_corpus(config, tag="demo", message="demo corpus", on_event=console.print)
    console.print({k: v for k, v in metadata.items() if k != "preview"})
    return LakeConfig.local(Path(config.lake_dir)), metadata


def run_demo(out_dir: Path, *, cache_dir: Path | None = None, size: int = 64) -> Path:
    """Tiny models -> corpus snapshot (+ stats) -> a few training steps -> edits with the checkpoint -> PNG grid."""
    from datasets_builder.lake import read_table
    from datasets_builder.stats import snapshot_stats
    from model_zoo import build_tiny_models
    from npedit.corpus_cli import print_result
    from training.backbones import ZImageBackbone
    from training.checkpoint import latest_checkpoint
    from training.config import load_config
    from training.run import run_training
    from training.sampling import edit_images
    from training.visualize import from_pil, save_edit_grid, to_pil

    console = Console()
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    console.rule("1. tiny models")
    models = build_tiny_models(cache_dir)
    console.print(f"VLM {models.vlm}\ngenerator {models.generator}")

    console.rule("2. corpus: loopback URLs -> img2dataset -> VLM stages -> DuckLake snapshot")
    lake, _ = build_demo_corpus(out_dir, console)
    lake_dir = out_dir / "corpus_lake"
    for result in snapshot_stats(lake, "demo"):
        print_result(console, result)

    console.rule("3. train from snapshot 'demo' (recipe debug_tiny: warmup, one-step, two-step phases)")
    config = load_config("debug_tiny", overrides={"data.lake_dir": str(lake_dir), "data.snapshot": "demo"})
    trainer = run_training(config, out_dir / "run", resume=False)
    checkpoint = latest_checkpoint(out_dir / "run")
    console.print(f"trained {trainer.step} steps; checkpoint {checkpoint}; curves {out_dir / 'run' / 'loss_curves.png'}")

    console.rule("4. edit snapshot images with the trained checkpoint (4 steps, no CFG)")
    instructions = read_table(lake, "edit_instructions", "demo", columns=["image_id", "instruction"]).to_pylist()
    images = {r["image_id"]: r["image"] for r in read_table(lake, "images", "demo", ["image_id", "image"]).to_pylist()}
    rows = instructions[:4]
    references = [Image.open(io.BytesIO(images[r["image_id"]])).convert("RGB") for r in rows]
    backbone = ZImageBackbone.from_pretrained(checkpoint / "generator")
    batch = torch.stack([from_pil(img, (size, size)) for img in references])
    texts = [r["instruction"] for r in rows]
    edited = edit_images(backbone, batch, texts, num_steps=4, generator=torch.Generator().manual_seed(0))
    grid = save_edit_grid(references, texts, [to_pil(e) for e in edited], out_dir / "edit_grid.png")
    console.print(f"edit grid: {grid}")
    return grid
