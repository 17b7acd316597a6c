"""Few-step unrolled sampling WITH gradient, and the schedule that decides how many steps.

Step 1 always starts from pure noise at t=1. After the single-step phase, with probability `two_step_prob` the
prediction is re-noised with fresh noise to t in `two_step_times` (through the backbone's time shift) and denoised
once more. Gradients flow through both generator calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.backbones.base import Backbone, TextFeatures, noise_to, x0_from_velocity
from training.config import ScheduleConfig


@dataclass(frozen=True)
class UnrollPlan:
    times: tuple[float, ...]  # model-convention noise levels of each generator call, starting with 1.0

    @property
    def num_steps(self) -> int:
        return len(self.times)


def phase(step: int, schedule: ScheduleConfig) -> str:
    """'warmup' (identity reconstruction), 'single_step', or 'two_step'."""
    if step < schedule.warmup_steps:
        return "warmup"
    if step < schedule.warmup_steps + schedule.single_step_steps:
        return "single_step"
    return "two_step"


def plan_unroll(step: int, schedule: ScheduleConfig, backbone: Backbone, seed: int) -> UnrollPlan:
    """The unroll for a global step; seeded by (seed, step) so every rank and every fake-score sub-step agree."""
    if phase(step, schedule) != "two_step":
        return UnrollPlan((1.0,))
    rng = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if torch.rand((), generator=rng).item() >= schedule.two_step_prob:
        return UnrollPlan((1.0,))
    choice = schedule.two_step_times[int(torch.randint(len(schedule.two_step_times), (), generator=rng))]
    return UnrollPlan((1.0, float(backbone.shift_time(torch.tensor(choice)))))


Generators = torch.Generator | Sequence[torch.Generator] | None


def draw_noise(like: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise shaped like `like`: from one generator for the batch, or one per sample (a sample then
    draws the same noise in any batch)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
    if len(generator) != like.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {like.shape[0]}")
    return torch.cat([torch.randn((1, *like.shape[1:]), generator=g, dtype=like.dtype) for g in generator]
                     ).to(like.device)


def unroll(
    backbone: Backbone,
    noise: torch.Tensor,
    text: TextFeatures,
    reference: torch.Tensor,
    plan: UnrollPlan,
    generator: Generators = None,
) -> torch.Tensor:
    """x0 after `plan.num_steps` generator calls; differentiable w.r.t. the generator's parameters."""
    x_t, x0 = noise, None
    for i, t in enumerate(plan.times):
        t_batch = torch.full((noise.shape[0],), t, device=noise.device)
        if i > 0:  # re-noise the previous prediction with fresh noise
            x_t = noise_to(x0, draw_noise(x0, generator), t_batch)
        x0 = x0_from_velocity(x_t, t_batch, backbone.predict_velocity(x_t, t_batch, text, reference=reference))
    return x0
