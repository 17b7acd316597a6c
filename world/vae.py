"""The world's VAE: a diffusers `AutoencoderKL` trained on world renders, with a time budget, resume and a manifest.

Quality is measured the way the experiment needs it: PSNR of reconstructions and the share that the classical
verifier still parses as their scene.
"""

from __future__ import annotations

import json
import random
import sys
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from world.budget import BudgetedRun
from world.scene import random_scene, render
from world.verify import matches_scene, parse_image, psnr, shape_rates

VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64), layers_per_block=1,
                  latent_channels=16, norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False)
HELD_OUT_SEED = 10_000_019  # scenes no training batch draws


def renders(scenes, pool: Executor | None = None) -> torch.Tensor:
    """The scenes' renders as a (n, 3, size, size) tensor in [-1, 1], drawn by `pool`'s workers when given."""
    images = pool.map(render, scenes, chunksize=max(1, len(scenes) // 16)) if pool else map(render, scenes)
    pixels = np.stack([np.asarray(image, np.float32) for image in images]) / 127.5 - 1
    return torch.from_numpy(pixels).permute(0, 3, 1, 2)


def scene_batch(rng: random.Random, n: int, size: int = 64) -> tuple[list, torch.Tensor]:
    """n random scenes and their renders as a (n, 3, size, size) tensor in [-1, 1]."""
    scenes = [random_scene(rng, size=size) for _ in range(n)]
    return scenes, renders(scenes)


def reconstruct(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)


def _to_pixels(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) rounded to 0..255, as the image would be saved."""
    return ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255)


def evaluate(vae: AutoencoderKL, n: int = 256, size: int = 64, seed: int = HELD_OUT_SEED) -> dict[str, float]:
    """PSNR and verifier parse rate of reconstructions of `n` held-out scenes (another seed: a fresh sample)."""
    scenes, images = scene_batch(random.Random(seed), n, size)
    vae.eval()
    outputs = torch.cat([reconstruct(vae, images[i:i + 64]) for i in range(0, n, 64)])
    vae.train()
    values = [psnr(_to_pixels(o), _to_pixels(i)) for o, i in zip(outputs, images)]
    parsed = [(parse_image(_to_pixels(o)), s) for o, s in zip(outputs, scenes)]
    return {"psnr_db": float(np.mean(values)), "parse_rate": float(np.mean([matches_scene(*p) for p in parsed])),
            **shape_rates(parsed), "n": n}


def set_latent_statistics(vae: AutoencoderKL, size: int = 64, n: int = 256) -> None:
    """Shift and scale so that scaled latents have mean 0 and unit variance on world scenes (as Flux/SD do)."""
    _, images = scene_batch(random.Random(HELD_OUT_SEED + 1), n, size)
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
    vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=float(1 / latents.std()))


def edge_weights(images: torch.Tensor, weight: float) -> torch.Tensor:
    """(B,1,H,W): 1 + `weight` on pixels within one pixel of a colour change (object outlines, stripes), where a
    blurry reconstruction costs the verifier most and the mean squared error least."""
    change = torch.zeros_like(images[:, :1])
    change[..., 1:, :] += (images[..., 1:, :] - images[..., :-1, :]).abs().amax(1, keepdim=True)
    change[..., :, 1:] += (images[..., :, 1:] - images[..., :, :-1]).abs().amax(1, keepdim=True)
    near = F.max_pool2d((change > 0.1).float(), 3, stride=1, padding=1)
    return 1 + weight * near


def reconstruction_loss(output: torch.Tensor, images: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """MSE + 0.1 L1, each pixel weighted by `edge_weights` (normalised so flat images keep the plain loss)."""
    weights = edge_weights(images, edge_weight)
    per_pixel = ((output - images) ** 2 + 0.1 * (output - images).abs()).mean(1, keepdim=True)
    return (weights * per_pixel).sum() / weights.sum()


def train_vae(out_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0, batch_size: int = 32,
              lr: float = 5e-4, size: int = 64, eval_every_s: float = 300, eval_scenes: int = 256,
              edge_weight: float = 0.0, config: dict | None = None, progress: bool = True) -> dict:
    """Train (or continue) the world VAE under `out_dir` for `minutes` of wall time (or until `max_steps` in all);
    writes `out_dir/vae/` (fp16 safetensors, diffusers layout) and its `manifest.json`. A killed run resumes from
    `vae_train_state.pt`."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = config or VAE_CONFIG
    vae = AutoencoderKL(**config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    run = BudgetedRun(out_dir / "vae_train_state.pt", {"model": vae}, optimizer, rng, minutes=minutes,
                      max_steps=max_steps, eval_every_s=eval_every_s, desc="world vae", progress=progress)
    while run.running():
        for group in optimizer.param_groups:  # warmup over the first 50 steps of the run's life
            group["lr"] = lr * min(1.0, (run.step + 1) / 50)
        _, images = scene_batch(rng, batch_size, size)
        posterior = vae.encode(images).latent_dist
        output = vae.decode(posterior.sample()).sample
        loss = reconstruction_loss(output, images, edge_weight) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        run.after_step(loss.item(), lambda: evaluate(vae, 64, size))
    facts = run.finish()
    quality = evaluate(vae, eval_scenes, size)
    set_latent_statistics(vae, size, eval_scenes)
    manifest = {"model": "vae", "architecture": "diffusers AutoencoderKL", "config": config, "seed": seed,
                "batch_size": batch_size, "lr": lr, "edge_weight": edge_weight, "image_size": size, **facts, "command": invocation(),
                "quality": quality}
    vae.to(torch.float16).save_pretrained(out_dir / "vae", safe_serialization=True)
    (out_dir / "vae" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def degrade_latents(latents: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Latents drawn the way an editor draws them, one degradation per sample, a quarter left clean: noised (up to
    `strength` x the latents' std), blended toward another sample's latent (a ghost of another scene, up to 40 %
    times `strength`) or spatially smoothed (3x3 mean, mixed in up to `strength`)."""
    n = latents.shape[0]
    u = lambda: torch.rand(n, 1, 1, 1, generator=generator) * strength  # noqa: E731
    kind = torch.randint(0, 4, (n, 1, 1, 1), generator=generator)  # 0 clean, 1 noise, 2 ghost, 3 smoothed
    noised = latents + u() * latents.std() * torch.randn(latents.shape, generator=generator)
    ghost = latents + 0.4 * u() * (latents.roll(1, 0) - latents)
    smooth = F.avg_pool2d(latents, 3, stride=1, padding=1, count_include_pad=False)
    smoothed = latents + u() * (smooth - latents)
    return torch.where(kind == 1, noised, torch.where(kind == 2, ghost, torch.where(kind == 3, smoothed, latents)))


def evaluate_degraded(vae: AutoencoderKL, n: int = 128, size: int = 64, seed: int = HELD_OUT_SEED,
                      strength: float = 1.0) -> dict[str, float]:
    """The share of held-out scenes whose degraded latents (`degrade_latents`, a fixed draw) still decode to a scene
    the verifier parses as theirs: how much of an editor's imprecision the decoder absorbs."""
    scenes, images = scene_batch(random.Random(seed), n, size)
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
        latents = degrade_latents(latents, torch.Generator().manual_seed(seed), strength)
        outputs = torch.cat([vae.decode(latents[i:i + 64]).sample.clamp(-1, 1) for i in range(0, n, 64)])
    vae.train()
    return {"degraded_parse_rate": float(np.mean([matches_scene(parse_image(_to_pixels(o)), s)
                                                  for o, s in zip(outputs, scenes)])), "degraded_n": n}


def finetune_decoder(out_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0,
                     batch_size: int = 16, lr: float = 5e-4, size: int = 64, eval_every_s: float = 300,
                     eval_scenes: int = 256, edge_weight: float = 4.0, degrade: float = 0.0,
                     progress: bool = True) -> dict:
    """Sharpen the decoder of the VAE in `out_dir/vae/` with its encoder frozen (reconstructing from the posterior
    mode), so latents, their statistics and any teacher trained on them stay valid; rewrites `out_dir/vae/` and adds
    this phase to its manifest. A killed run resumes from its state file.

    With `degrade` > 0 (the `vae_decoder_robust` stage) the decoder learns to draw the clean scene from latents
    degraded by `degrade_latents` at that strength: a decoder that absorbs what editors get wrong in latent space, from
    world images alone (no pairs, no editor)."""
    out_dir = Path(out_dir)
    vae = load_vae(out_dir / "vae")
    manifest = json.loads((out_dir / "vae" / "manifest.json").read_text())
    vae.encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(vae.decoder.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed + 1 + 7 * (degrade > 0))
    phase = "decoder_robust" if degrade > 0 else "decoder_finetune"
    measure = (lambda: evaluate(vae, 64, size) | evaluate_degraded(vae, 64, size, strength=degrade)) if degrade > 0 \
        else (lambda: evaluate(vae, 64, size))
    state_file = "vae_decoder_robust_state.pt" if degrade > 0 else "vae_decoder_state.pt"
    run = BudgetedRun(out_dir / state_file, {"decoder": vae.decoder}, optimizer, rng, minutes=minutes,
                      max_steps=max_steps, eval_every_s=eval_every_s, desc=f"world vae {phase.replace('_', ' ')}",
                      progress=progress)
    while run.running():
        for group in optimizer.param_groups:  # the robust phase anneals its rate to zero over its budget
            group["lr"] = run.rate(lr, anneal=degrade > 0, warmup_steps=50)
        _, images = scene_batch(rng, batch_size, size)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mode()
            if degrade > 0:
                generator = torch.Generator().manual_seed(seed * 1_000_003 + run.step)  # the same after a resume
                latents = degrade_latents(latents, generator, degrade)
        output = vae.decode(latents).sample
        loss = reconstruction_loss(output, images, edge_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.decoder.parameters(), 1.0)
        optimizer.step()
        run.after_step(loss.item(), measure)
    facts = run.finish()
    manifest["quality"] = evaluate(vae, eval_scenes, size) | (
        evaluate_degraded(vae, eval_scenes, size, strength=degrade) if degrade > 0 else {})
    manifest[phase] = {"batch_size": batch_size, "lr": lr, "edge_weight": edge_weight, **facts,
                       "command": invocation()} | ({"degrade": degrade} if degrade > 0 else {})
    vae.to(torch.float16).save_pretrained(out_dir / "vae", safe_serialization=True)
    (out_dir / "vae" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def invocation() -> str:
    """The npedit command that is running, for a manifest ("" when called from Python)."""
    launched = sys.argv and (sys.argv[0].endswith("npedit") or sys.argv[0].endswith("npedit/cli.py"))  # or -m
    return " ".join(["npedit", *sys.argv[1:]]) if launched else ""


def load_vae(path: Path | str) -> AutoencoderKL:
    """The world VAE from its folder (fp16 on disk), in float32."""
    return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32)


def decode_with(backbone, path: Path | str) -> None:
    """Make `backbone` decode its latents with the VAE in `path`: one with the backbone's own encoder and latent
    statistics (a decoder continued with its encoder frozen), so the editor's latent space is unchanged. A VAE with
    another encoder raises ValueError."""
    vae, own = load_vae(path), backbone.vae
    same_encoder = all(torch.equal(a, b.to(a.dtype)) for a, b in zip(own.encoder.state_dict().values(),
                                                                     vae.encoder.state_dict().values()))
    same_statistics = (vae.config.shift_factor, vae.config.scaling_factor) == (own.config.shift_factor,
                                                                               own.config.scaling_factor)
    if not (same_encoder and same_statistics):
        raise ValueError(f"the VAE in {path} has another encoder or latent statistics than the editor's: its decoder "
                         f"does not read the editor's latents")
    backbone.vae = vae.to(own.dtype).requires_grad_(False).eval()
