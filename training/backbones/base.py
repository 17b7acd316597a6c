"""The backbone protocol: one time convention (the paper's) at the boundary of every generator family.

Convention: x_t = (1 - t) * x0 + t * eps, t = 1 is pure noise, velocity v = eps - x0, so x0 = x_t - t * v.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class TextFeatures:
    """Encoded prompts: per sample, the list of caption segments the transformer consumes."""

    segments: list[list[torch.Tensor]]
    num_references: int

    def __len__(self) -> int:
        return len(self.segments)

    def repeat(self, times: int) -> TextFeatures:
        return TextFeatures([s for _ in range(times) for s in self.segments], self.num_references)

    def concat(self, other: TextFeatures) -> TextFeatures:
        if other.num_references != self.num_references:
            raise ValueError("cannot concatenate text features encoded for different numbers of references")
        return TextFeatures(self.segments + other.segments, self.num_references)


class Backbone(Protocol):
    """A flow-matching DiT + text encoder + VAE, optionally conditioned on a clean reference image."""

    latent_channels: int
    spatial_factor: int

    def encode_text(self, prompts: list[str], *, num_references: int = 0) -> TextFeatures: ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...

    def predict_velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, text: TextFeatures, reference: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def shift_time(self, t: torch.Tensor) -> torch.Tensor: ...


def x0_from_velocity(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 = x_t - t * v under x_t = (1 - t) x0 + t eps, v = eps - x0."""
    return x_t - _per_sample(t, x_t) * v


def noise_to(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * eps


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(device=like.device, dtype=like.dtype)
