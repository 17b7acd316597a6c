"""Editing speed: edits/s and latency of 4-step editing on this CPU (the tiny zoo model and the committed world
editor, per batch size, with the share of text encoding, VAE encode, transformer steps and VAE decode), and counted
FLOPs per edit at real shapes so a GPU run states MFU. Run: .venv/bin/python -m benchmarks.bench_edit [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.bench_train import Timers
from benchmarks.flops import zimage_forward_flops
from training.backbones import ZImageBackbone
from training.sampling import edit_images

STEPS = 4
BATCHES = (1, 4, 16)


def editing_speed(name: str, path, size: int, repeats: int) -> None:
    """Median seconds per batch at each batch size, the component shares at the largest, and the batching gain."""
    backbone = ZImageBackbone.from_pretrained(path)
    timers = Timers()
    backbone.encode_text = timers.wrap("text encoder", backbone.encode_text)
    backbone.encode_images = timers.wrap("VAE encode", backbone.encode_images)
    backbone.predict_velocity = timers.wrap(f"transformer x{STEPS}", backbone.predict_velocity)
    backbone.decode_latents = timers.wrap("VAE decode", backbone.decode_latents)
    rates = {}
    for batch in BATCHES:
        images = torch.rand(batch, 3, size, size) * 2 - 1
        instructions = ["make the red circle blue"] * batch
        with torch.no_grad():
            edit_images(backbone, images, instructions, num_steps=STEPS)  # warm-up
            timers.seconds.clear()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                edit_images(backbone, images, instructions, num_steps=STEPS, generator=torch.Generator().manual_seed(0))
                times.append(time.perf_counter() - start)
        latency = statistics.median(times)
        rates[batch] = batch / latency
        print(f"{name}, {size} px, batch {batch:2d}: {latency * 1000:7.1f} ms per batch, {rates[batch]:6.1f} edits/s")
    total = sum(timers.seconds.values())
    shares = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in sorted(timers.seconds.items(), key=lambda kv: -kv[1]))
    print(f"  time at batch {BATCHES[-1]}: {shares}")
    print(f"  batch {BATCHES[-1]} / batch 1 throughput: {rates[BATCHES[-1]] / rates[1]:.1f}x")


def real_shapes(resolution: int) -> None:
    _, omni, params = zimage_forward_flops(resolution)
    per_edit = STEPS * omni
    print(f"real shapes ({resolution} px, Z-Image {params / 1e9:.2f} B params): omni forward {omni / 1e12:.1f} TFLOP, "
          f"{STEPS}-step edit {per_edit / 1e12:.1f} TFLOP (transformer only; VAE and text encoder not included)")
    print(f"  MFU = edits/s x {per_edit / 1e12:.1f} TFLOP / (GPUs x peak TFLOP/s), e.g. 989 TFLOP/s dense bf16 on H100")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from model_zoo import build_tiny_models
    from world import PRETRAINED

    editing_speed("tiny zoo model (random)", build_tiny_models().generator, 64, args.repeats)
    editing_speed("world editor (committed teacher)", PRETRAINED / "teacher", 64, args.repeats)
    for resolution in (512, 1024):
        real_shapes(resolution)


if __name__ == "__main__":
    main()
