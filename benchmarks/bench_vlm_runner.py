"""VLM runner throughput on the tiny model: batched requests vs one at a time, as a ratio measured in one run.

Run: .venv/bin/python -m benchmarks.bench_vlm_runner
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from datasets_builder.vlm import PROMPTS, PromptInput, ResponseCache, VlmRunner
from datasets_builder.vlm.backends import TransformersBackend
from model_zoo import build_tiny_models
from npedit.demo import sample_image_paths
from schemas import VlmStage


def _throughput(backend, stage: VlmStage, items, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        runner = VlmRunner(backend, ResponseCache(Path(tmp) / "c.sqlite"), batch_size=batch_size)
        started = time.perf_counter()
        runner.run(PROMPTS[stage], items)
        return len(items) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    backend = TransformersBackend(build_tiny_models().vlm)
    photos = sample_image_paths()
    items = [PromptInput(f"{i}", photos[i % len(photos)].read_bytes(), {"count": 4}) for i in range(args.images)]
    _throughput(backend, VlmStage.CAPTION, items[:2], 2)  # warm-up: grammar compilation, first forward
    for stage in (VlmStage.CAPTION, VlmStage.PROPOSE):
        single = _throughput(backend, stage, items, 1)
        batched = _throughput(backend, stage, items, args.batch_size)
        print(f"{stage.value:8s} one-at-a-time {single:6.1f} req/s | batch {args.batch_size} {batched:6.1f} req/s | "
              f"ratio {batched / single:.2f}x")


if __name__ == "__main__":
    main()
