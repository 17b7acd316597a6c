"""Few-step inference, no CFG: the re-noising sampler the generator is trained with (default), or Euler."""

from __future__ import annotations

import torch

from training.backbones.base import Backbone, noise_to, x0_from_velocity

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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Edit reference images in [-1, 1] (B,3,H,W) following the instructions; returns images in [-1, 1].

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
    text = backbone.encode_text(instructions, num_references=1)

    def noise() -> torch.Tensor:
        sample = torch.randn(reference_latents.shape, generator=generator, dtype=reference_latents.dtype)
        return sample.to(reference_latents.device)

    x = noise()
    times = sampling_times(backbone, num_steps).to(x.device)
    for t, t_next in zip(times[:-1], times[1:]):
        t_batch = t.expand(x.shape[0])
        v = backbone.predict_velocity(x, t_batch, text, reference=reference_latents)
        if sampler == "euler":
            x = x + (t_next - t) * v  # Euler step along dx/dt = v
        else:
            x0 = x0_from_velocity(x, t_batch, v)
            x = noise_to(x0, noise(), t_next.expand(x.shape[0])) if t_next > 0 else x0
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
    """Text-to-image with Euler steps and classifier-free guidance (v_neg + s (v_pos - v_neg)); images in [-1, 1]."""
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
            v_pos, v_neg = v.chunk(2)
            v = v_neg + cfg_scale * (v_pos - v_neg)
        x = x + (t_next - t) * v
    return backbone.decode_latents(x).clamp(-1, 1)
