"""The training losses as pure tensor functions, each named after the paper's equation it implements.

Convention (everywhere in `training`): x_t = (1 - t) x0 + t eps, t = 1 is noise, v = eps - x0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every non-batch dimension, one value per sample."""
    return F.mse_loss(a, b, reduction="none").flatten(1).mean(dim=1)


def vlm_feedback_loss(logit_correct: torch.Tensor, logit_wrong: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Paper eqn. 4: L_VLM = -log sigmoid(T (l_correct - l_wrong)), per question; returns the per-item loss."""
    return -F.logsigmoid(temperature * (logit_correct - logit_wrong))


def dmd_gradient(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """DMD2's normalised distribution-matching direction: (x0_fake - x0_real) / mean|x0 - x0_real| per sample.

    The normaliser averages over every non-batch dimension (C, H, W), one scalar per sample; the reference
    reimplementation's per-location normaliser is a bug (see docs/ARCHITECTURE.md, "Trainer").
    """
    dims = tuple(range(1, x0.dim()))
    weight = (x0 - x0_real).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((x0_fake - x0_real) / weight)


def dmd_loss(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """Paper eqn. 5 (DMD2 form): 0.5 * ||x0 - sg(x0 - g)||^2 averaged per sample, so d/dx0 = g / numel(sample).

    Returns the per-sample loss; `x0_real` and `x0_fake` carry no gradient.
    """
    grad = dmd_gradient(x0.detach(), x0_real.detach(), x0_fake.detach())
    target = (x0 - grad).detach()
    return 0.5 * _per_sample_mse(x0, target)


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Rectified-flow objective ||v_pred - (eps - x0)||^2, per sample (fake-score updates, identity warmup)."""
    return _per_sample_mse(v_pred, eps - x0)


def consistency_loss(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Paper appendix C's input-output consistency term (LPIPS there; mean squared pixel error here), per sample."""
    return _per_sample_mse(output, reference)


def reconstruction_loss(x0: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """"Do nothing" regulariser: the output should equal the reference latent; per sample."""
    return _per_sample_mse(x0, reference)
