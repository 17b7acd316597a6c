"""Few-step inference, no CFG: the re-noising sampler the generator is trained with (default), or Euler."""

from __future__ import annotations

import torch

from training.backbones.base import Backbone, guided_velocity
from training.unroll import Generators, UnrollPlan, draw_noise, unroll

SAMPLERS = ("renoise", "euler")


def sampling_times(backbone: Backbone, num_steps: int) -> torch.Tensor:
    """t_0 = 1 > t_1 > ... > t_N = 0: a uniform grid passed through the backbone's time shift."""
    return backbone.shift_time(torch.linspace(1.0, 0.0, num_steps + 1))


@torch.no_grad()
def edit_images(
    backbone: Backbone,
    references: torch.Tensor,
    instructions: list[str],
    *,
    num_steps: int = 4,
    sampler: str = "renoise",
    generator: Generators = None,
) -> torch.Tensor:
    """Edit reference images in [-1, 1] (B,3,H,W) following the instructions; returns images in [-1, 1].
    `generator` may be one per sample, so a sample's noise does not depend on the batch it is in.

    `renoise` matches the training unroll: predict x0, then re-noise it with fresh noise to the next t.
    `euler` integrates dx/dt = v deterministically. With one step both return the same x0.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    factor = backbone.spatial_factor
    height, width = references.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} must be a multiple of {factor}")
    reference_latents = backbone.encode_images(references)
    text = backbone.encode_text(instructions, num_references=1, reference_images=references)

    x = draw_noise(reference_latents, generator)
    times = sampling_times(backbone, num_steps).to(x.device)
    if sampler == "renoise":  # the training unroll itself, over the whole grid
        plan = UnrollPlan(tuple(float(t) for t in times[:-1]))
        return backbone.decode_latents(unroll(backbone, x, text, reference_latents, plan, generator)).clamp(-1, 1)
    for t, t_next in zip(times[:-1], times[1:]):
        v = backbone.predict_velocity(x, t.expand(x.shape[0]), text, reference=reference_latents)
        x = x + (t_next - t) * v  # Euler step along dx/dt = v
    return backbone.decode_latents(x).clamp(-1, 1)

@torch.no_grad()
def generate_images(
    backbone: Backbone,
    prompts: list[str],
    *,
    size: tuple[int, int],
    num_steps: int = 20,
    cfg_scale: float = 1.0,
    negative_prompt: str = "",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Text-to-image with Euler steps and classifier-free guidance; images in [-1, 1]."""
    height, width = size
    factor = backbone.spatial_factor
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} must be a multiple of {factor}")
    text = backbone.encode_text(prompts)
    if cfg_scale != 1.0:
        text = text.concat(backbone.encode_text([negative_prompt] * len(prompts)))
    latent = backbone.encode_images(torch.zeros(1, 3, height, width))  # the latent shape of this image size
    x = torch.randn((len(prompts), *latent.shape[1:]), generator=generator).to(latent)
    times = sampling_times(backbone, num_steps).to(x.device)
    for t, t_next in zip(times[:-1], times[1:]):
        both = x if cfg_scale == 1.0 else torch.cat([x, x])
        v = backbone.predict_velocity(both, t.expand(both.shape[0]), text)
        if cfg_scale != 1.0:
            v = guided_velocity(*v.chunk(2), cfg_scale)
        x = x + (t_next - t) * v
    return backbone.decode_latents(x).clamp(-1, 1)
