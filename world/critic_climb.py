"""Does the critic's gradient point at the edit? `npedit world probe-critic --climb`: from each held-out local colour
edit's source, follow the critic's gradient as an editor does under the VLM loss (Adam on the log-likelihood of Yes
to the edit and identity questions, summed as the loss sums them), in pixels and, with a VAE, through its latent as
an editor's output is decoded; then ask the verifier. A critic whose Yes can only be reached by making the edit
paints the asked colour on the named object; one whose Yes is reachable another way reaches P(Yes) near 1 with the
edit unmade, and an editor following it can do the same (findings, section 30)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from schemas.errors import Refused
from training.questions import REFERENCE, questions_for
from training.visualize import save_labelled_rows, to_pil
from world.edits import WorldEdit
from world.instruction_probe import _interior, _interior_means, _named_object, _nearest
from world.score import score_edit
from world.vae import renders


@dataclass(frozen=True)
class ClimbPoint:
    steps: int  # Adam steps taken (0: the start, the source or its VAE round trip)
    p_yes_edit: float  # mean P(Yes) to the edit question
    p_yes_identity: float  # mean P(Yes) to the identity question
    made: float  # share of outputs where the verifier finds the edit made (realism aside)
    asked_colour: float  # share whose named object's interior is nearest the asked colour
    source_colour: float  # share whose named object's interior is still nearest its source colour
    change: float  # mean absolute change from the source, 0-255


def measurable(edits: list[WorldEdit]) -> list[WorldEdit]:
    """The local colour edits among `edits` whose named object has an interior to read its colour from."""
    return [e for e in edits if e.edit_type == "local_color_change" and _interior(e).any()]


def made_log_odds(critic, edits: list[WorldEdit], sources: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """(2, edits): the critic's log-odds, for each edit's edit and identity questions about its output beside its
    source, of the answer a made edit gets (Yes; No to a removal's "does it still contain"), as the VLM loss asks."""
    shown, texts, signs = [], [], []
    for i, edit in enumerate(edits):
        for q in questions_for(edit.edit_type, edit.instruction, edit.target_object):
            shown.append([sources[i] if role == REFERENCE else outputs[i] for role in q.images])
            texts.append(q.text)
            signs.append(1.0 if q.correct == "Yes" else -1.0)
    yes, no = critic.answer_logits(shown, texts)
    return (torch.tensor(signs) * (yes - no)).view(len(edits), -1).T


def _point(steps: int, edits: list[WorldEdit], sources: torch.Tensor, outputs: torch.Tensor,
           log_odds: torch.Tensor) -> ClimbPoint:
    colours = [_nearest(_interior_means(e, o[None]))[0] for e, o in zip(edits, outputs)]
    p_yes = torch.sigmoid(log_odds).mean(1)
    return ClimbPoint(steps, float(p_yes[0]), float(p_yes[1]),
                      float(np.mean([score_edit(e, o).applied for e, o in zip(edits, outputs)])),
                      float(np.mean([c == e.target.object_at(e.cell).colour for e, c in zip(edits, colours)])),
                      float(np.mean([c == _named_object(e).colour for e, c in zip(edits, colours)])),
                      float((outputs - sources).abs().mean() * 127.5))


def climb_critic(critic, edits: list[WorldEdit], *, steps: tuple[int, ...] = (10, 30, 100), lr: float = 0.02,
                 vae=None, in_mask: bool = False) -> tuple[list[ClimbPoint], torch.Tensor]:
    """Climb the critic's Yes from the sources of `edits` (local colour edits whose object has an interior), in pixels
    (with `in_mask`, only inside each edit's mask: the named object, as an editor that keeps the rest) or, with `vae`,
    through its latent; the measures at the start and after each of `steps`, and the outputs at the last. The critic's
    weights and their gradients are left as they were."""
    if in_mask and vae is not None:
        raise ValueError("a climb through the VAE's latent changes every pixel: in_mask is for pixels")
    edits = measurable(edits)
    if not edits:
        raise Refused("no local colour edit with an object large enough to measure")
    was_training = critic.model.training
    critic.model.eval()
    sources = renders([e.source for e in edits])
    if in_mask:
        mask = torch.from_numpy(np.stack([e.mask() for e in edits])).float()[:, None]
        start, look = torch.zeros_like(sources), (lambda v: (sources + v * mask).clamp(-1, 1))
    elif vae is None:
        start, look = sources.clone(), (lambda v: v.clamp(-1, 1))
    else:  # the latent normalised as the editor's backbone normalises it, so a step means what it means there
        scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
        with torch.no_grad():
            start = (vae.encode(sources).latent_dist.mode() - shift) * scale
        look = lambda v: vae.decode(v / scale + shift).sample.clamp(-1, 1)  # noqa: E731
    variable = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=lr)
    points = []
    for step in range(max(steps) + 1):
        outputs = look(variable)
        log_odds = made_log_odds(critic, edits, sources, outputs)
        if step == 0 or step in steps:
            points.append(_point(step, edits, sources, outputs.detach(), log_odds.detach()))
        if step == max(steps):
            break
        (variable.grad,) = torch.autograd.grad(-F.logsigmoid(log_odds).sum(0).mean(), variable)
        optimizer.step()
    critic.model.train(was_training)
    return points, outputs.detach()


def save_climb_grid(edits: list[WorldEdit], climbed: dict[str, torch.Tensor], path, rows: int = 8):
    """A PNG row per edit: the source, the target, then each climb's last output."""
    edits = measurable(edits)
    sources, targets = renders([e.source for e in edits[:rows]]), renders([e.target for e in edits[:rows]])
    return save_labelled_rows(
        [(edit.instruction, [(to_pil(sources[i]), "source"), (to_pil(targets[i]), "target")]
          + [(to_pil(outputs[i]), label) for label, outputs in climbed.items()])
         for i, edit in enumerate(edits[:rows])], path)
