"""Trainer speed on this CPU with tiny models, and FLOPs per sample at the real recipe's shapes (for MFU on a GPU).

Reports, from one run: the step-time share of generator forward, VAE decode, VLM critic, teacher + fake score (DMD),
backward + optimizer, fake-score updates and data loading; the loader's throughput as a multiple of what the trainer
consumes; step time, trainable parameters and peak memory per backbone (Z-Image, Z-Image omni with SigLIP2,
FLUX.2 klein), full fine-tuning vs LoRA; FLOPs per training sample for the tiny run (counted) and for the real Z-Image and klein base 4B shapes
(counted on the meta device, no weights needed); with --world only the step-time shares of the `world_cpu` recipe
(committed world models, batch 8, two-step unrolls, one thread); the world teacher's training step with a token
per latent pixel against the committed teacher's 2x2 (`--teacher-patch` for it alone). Run:
.venv/bin/python -m benchmarks.bench_train [--steps 10] [--world | --teacher-patch]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import klein_forward_flops, zimage_forward_flops
from model_zoo import build_tiny_models
from training.config import load_config
from training.run import build_trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from snapshot_fixture import write_fixture_snapshot  # noqa: E402


class Timers:
    """Wall time per component; a call nested inside another timed call counts for the outer one only."""

    def __init__(self):
        self.seconds, self.depth = defaultdict(float), 0

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            self.depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds[name] += time.perf_counter() - start

        return timed


def step_breakdown(steps: int, world: bool = False) -> None:
    """Step-time shares of the tiny zoo models under `debug_tiny` (batch 2), or with `world` of the committed world
    models under `world_cpu` (batch 8, two-step unrolls, one thread: the proof world's runs)."""
    from world import PRETRAINED

    torch.set_num_threads(1 if world else 2)
    models = None if world else build_tiny_models()
    with tempfile.TemporaryDirectory() as tmp:
        write_fixture_snapshot(Path(tmp) / "lake")
        recipe = "world_cpu" if world else "debug_tiny"
        overrides = {"model.generator": str(PRETRAINED / "teacher"), "model.critic": str(PRETRAINED / "critic")} \
            if world else {"model.generator": str(models.generator), "model.critic": str(models.vlm),
                           "data.batch_size": 2, "schedule.single_step_steps": 0}
        config = load_config(recipe, overrides={
            "data.lake_dir": str(Path(tmp) / "lake"), "schedule.warmup_steps": 0,
            "schedule.fake_steps_per_generator_step": 2, **overrides})
        trainer = build_trainer(config, Path(tmp) / "run")
        trainer.step = config.schedule.single_step_steps  # the two-step unrolls, most of a world run
        timers = Timers()
        trainer.generator.predict_velocity = timers.wrap("generator forward", trainer.generator.predict_velocity)
        trainer.generator.decode_latents = timers.wrap("VAE decode", trainer.generator.decode_latents)
        trainer.critic.answer_logits = timers.wrap("VLM critic", trainer.critic.answer_logits)
        trainer._dmd = timers.wrap("teacher + fake score (DMD)", trainer._dmd)
        trainer.fake_score_step = timers.wrap("fake-score updates", trainer.fake_score_step)
        next_batch = timers.wrap("data loading", trainer.batches.__next__)
        for _ in range(2):  # warm-up
            trainer.generator_step(next_batch())
        timers.seconds.clear()
        started = time.perf_counter()
        for _ in range(steps):
            for _ in range(config.schedule.fake_steps_per_generator_step):
                trainer.fake_score_step(next_batch())
            batch = next_batch()
            step_start = time.perf_counter()
            before = sum(v for k, v in timers.seconds.items() if k not in ("fake-score updates", "data loading"))
            trainer.generator_step(batch)
            inner = sum(v for k, v in timers.seconds.items() if k not in ("fake-score updates", "data loading"))
            timers.seconds["backward + optimizer + rest"] += (time.perf_counter() - step_start) - (inner - before)
            trainer.step += 1
        total = time.perf_counter() - started
        print(f"{'world' if world else 'tiny'} models, 64 px, batch {config.data.batch_size}, {config.schedule.fake_steps_per_generator_step} "
              f"fake-score updates per step: {total / steps:.3f} s/step")
        for name, seconds in sorted(timers.seconds.items(), key=lambda kv: -kv[1]):
            print(f"  {name:30s} {seconds / steps:7.4f} s  {100 * seconds / total:5.1f} %")

        loader = trainer.batches
        started, n = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0:
            n += len(next(loader).instructions)
        loader_rate = n / (time.perf_counter() - started)
        consumed = config.data.batch_size * (1 + config.schedule.fake_steps_per_generator_step) / (total / steps)
        print(f"loader {loader_rate:.0f} samples/s vs trainer consumption {consumed:.1f} samples/s: "
              f"{loader_rate / consumed:.0f}x headroom (one process, no workers)")

        counter = FlopCounterMode(display=False)
        with counter:
            for _ in range(config.schedule.fake_steps_per_generator_step):
                trainer.fake_score_step(next(loader))
            trainer.generator_step(next(loader))
        print(f"counted FLOPs per training sample ({'world' if world else 'tiny'}, incl. fake updates): "
              f"{counter.get_total_flops() / config.data.batch_size / 1e9:.2f} GFLOP")


def _one_setup(backbone: str, lora_rank: int, steps: int, results) -> None:
    """In its own process (so its peak resident memory is its own): s/step and trainable parameters of one setup."""
    import resource

    torch.set_num_threads(2)
    models = build_tiny_models()
    with tempfile.TemporaryDirectory() as tmp:
        write_fixture_snapshot(Path(tmp) / "lake")
        config = load_config("debug_tiny", overrides={
            "data.lake_dir": str(Path(tmp) / "lake"), "model.generator": str(getattr(models, backbone)),
            "model.critic": str(models.vlm), "schedule.warmup_steps": 0, "schedule.single_step_steps": 0,
            "schedule.fake_steps_per_generator_step": 1, "lora.rank": lora_rank})
        trainer = build_trainer(config, Path(tmp) / "run")
        trainer.train(until=1, progress=False)  # warm-up
        started = time.perf_counter()
        trainer.train(until=1 + steps, progress=False)
        seconds = (time.perf_counter() - started) / steps
    trainable = sum(p.numel() for p in trainer.generator.transformer.parameters() if p.requires_grad)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results.put((backbone, lora_rank, seconds, trainable, peak))


BACKBONES = {"generator": "Z-Image", "omni": "Z-Image omni", "klein": "FLUX.2 klein"}  # tiny zoo model -> name


def backbones_and_lora(steps: int) -> None:
    """Step time, trainable parameters and peak memory per backbone, full fine-tuning vs LoRA (tiny models)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    rows = {}
    for backbone in BACKBONES:
        for rank in (0, 8):
            results = context.Queue()
            process = context.Process(target=_one_setup, args=(backbone, rank, steps, results))
            process.start()
            rows[backbone, rank] = results.get(timeout=1800)[2:]
            process.join()
    memory = "peak GPU memory" if torch.cuda.is_available() else "peak resident memory of the process"
    for (backbone, rank), (seconds, trainable, peak) in rows.items():
        name = BACKBONES[backbone]
        print(f"  {name:13s} {'LoRA rank 8' if rank else 'full':11s} {seconds:.3f} s/step, {trainable:>9,d} trainable "
              f"parameters, {memory} {peak / 2**20:.0f} MB")
    for backbone in BACKBONES:
        (full, lora) = rows[backbone, 0], rows[backbone, 8]
        print(f"  {BACKBONES[backbone]}: LoRA / full = {lora[0] / full[0]:.2f}x step time, {lora[1] / full[1]:.3f}x trainable "
              f"parameters")


def real_shapes_flops() -> None:
    """FLOPs of the Z-Image transformer at the real recipe's shapes, counted on the meta device."""
    config = load_config("zimage_paper")
    t2i, omni, params = zimage_forward_flops(config.data.resolution)
    s = config.schedule
    unroll_calls = 1 + s.two_step_prob  # expected generator calls per unroll in the two-step phase
    generator = 3 * unroll_calls * omni  # forward + backward (~2x forward)
    dmd = 2 * t2i + t2i  # teacher with CFG (2 passes) + fake score, no grad
    fake_updates = s.fake_steps_per_generator_step * (unroll_calls * omni + 3 * t2i)
    total = generator + dmd + fake_updates
    print(f"real shapes ({config.data.resolution} px, Z-Image {params / 1e9:.2f} B params): T2I forward "
          f"{t2i / 1e12:.1f} TFLOP, omni (reference + target) forward {omni / 1e12:.1f} TFLOP")
    print(f"  per training sample: generator {generator / 1e12:.0f} + DMD {dmd / 1e12:.0f} + {s.fake_steps_per_generator_step} "
          f"fake-score updates {fake_updates / 1e12:.0f} = {total / 1e12:.0f} TFLOP (transformer only; VAE and VLM "
          f"not included)")
    print(f"  MFU = samples/s x {total / 1e12:.0f} TFLOP / (GPUs x peak TFLOP/s), e.g. 989 TFLOP/s dense bf16 on H100")
    t2i, edit, params = klein_forward_flops(config.data.resolution)
    generator, dmd = 3 * unroll_calls * edit, 3 * t2i
    fake_updates = s.fake_steps_per_generator_step * (unroll_calls * edit + 3 * t2i)
    total = generator + dmd + fake_updates
    print(f"FLUX.2 klein base 4B ({params / 1e9:.2f} B params, {config.data.resolution} px, 512 text tokens): T2I "
          f"forward {t2i / 1e12:.1f} TFLOP, with a reference {edit / 1e12:.1f} TFLOP; per training sample "
          f"{total / 1e12:.0f} TFLOP (full fine-tuning; LoRA saves the weight gradients' share of the backward)")


def teacher_patch_cost(steps: int) -> None:
    """The world teacher's training step (batch 32, 64 px, one thread) with a token per 2x2 latent pixels (the
    committed teacher's) against one per latent pixel: FLOPs counted, median wall time, and their ratios."""
    import random

    from world import PRETRAINED
    from world.scene import caption, random_scene
    from world.teacher import flow_matching_batch_loss, new_teacher

    torch.set_num_threads(1)
    rng = random.Random(0)
    scenes = [random_scene(rng) for _ in range(32)]
    captions = [caption(s, i % 3) for i, s in enumerate(scenes)]
    found = {}
    for patch in (2, 1):
        backbone = new_teacher(PRETRAINED / "vae", seed=0, patch_size=patch)
        with FlopCounterMode(display=False) as counter:
            flow_matching_batch_loss(backbone, scenes, captions).backward()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            flow_matching_batch_loss(backbone, scenes, captions).backward()
            times.append(time.perf_counter() - start)
        found[patch] = (counter.get_total_flops(), sorted(times)[len(times) // 2])
        print(f"world teacher, patch {patch} ({(scenes[0].size // backbone.spatial_factor) ** 2} image tokens): "
              f"{found[patch][0] / 1e9:.1f} GFLOP and {found[patch][1] * 1e3:.0f} ms per training step (median of "
              f"{steps})")
    print(f"  patch 1 / patch 2: {found[1][0] / found[2][0]:.2f}x FLOPs, {found[1][1] / found[2][1]:.2f}x step time")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--world", action="store_true", help="only the step-time shares of the world_cpu recipe")
    parser.add_argument("--teacher-patch", action="store_true",
                        help="only the world teacher's training step with patch 1 against patch 2")
    args = parser.parse_args()
    if args.world:
        step_breakdown(args.steps, world=True)
        return
    if args.teacher_patch:
        teacher_patch_cost(args.steps)
        return
    step_breakdown(args.steps)
    print("tiny models, full fine-tuning vs LoRA:")
    backbones_and_lora(args.steps)
    real_shapes_flops()
    teacher_patch_cost(args.steps)


if __name__ == "__main__":
    main()
