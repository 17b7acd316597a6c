"""Few-step inference: Euler integration of the paper-convention velocity field, no CFG."""

from __future__ import annotations

import torch

from training.backbones.base import Backbone


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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Edit reference images in [-1, 1] (B,3,H,W) following the instructions; returns images in [-1, 1]."""
    factor = backbone.spatial_factor
    height, width = references.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} must be a multiple of {factor}")
    reference_latents = backbone.encode_images(references)
    text = backbone.encode_text(instructions, num_references=1)
    x = torch.randn(reference_latents.shape, generator=generator, dtype=reference_latents.dtype)
    x = x.to(reference_latents.device)
    times = sampling_times(backbone, num_steps).to(x.device)
    for t, t_next in zip(times[:-1], times[1:]):
        t_batch = t.expand(x.shape[0])
        v = backbone.predict_velocity(x, t_batch, text, reference=reference_latents)
        x = x + (t_next - t) * v  # Euler step along dx/dt = v
    return backbone.decode_latents(x).clamp(-1, 1)

