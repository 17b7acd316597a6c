"""Does the critic's gradient point at the edit? `npedit world probe-critic --climb`: from each held-out local colour
edit's source, follow the critic's gradient as an editor does under the VLM loss (Adam on the log-likelihood of Yes
to the edit and identity questions, summed as the loss sums them), in pixels and, with a VAE, through its latent as
an editor's output is decoded; then ask the verifier. A critic whose Yes can only be reached by making the edit
paints the asked colour on the named object; one whose Yes is reachable another way reaches P(Yes) near 1 with the
edit unmade, and an editor following it can do the same (findings, section 30). Two ways to turn the gradient can be
measured beside it (section 31): averaged over noisy views of the images (`views`, `noise`), as a critic trained under
that noise is smoothed; and the trainer's DMD term from the teacher beside it (`TeacherPrior`), alone as a control.

The same climb from removal sources (`edit_type="remove"`) follows the trainer's questions for a removal, which ask
of the output alone whether it still holds the object; `presence=True` asks a local colour edit's the same way (does
the output hold the object as the edit leaves it, and no longer as it was?), a question design the trainer does not
use (findings, section 42)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from schemas.errors import Refused
from training.backbones.base import guided_velocity, noise_to, x0_from_velocity
from training.config import LossConfig
from training.losses import dmd_loss
from training.questions import REFERENCE, Question, presence_question, questions_for
from training.visualize import save_labelled_rows, to_pil
from world.edits import WorldEdit
from world.instruction_probe import _interior, _interior_means, _named_object, _nearest
from world.scene import caption
from world.score import score_edit
from world.vae import renders


@dataclass(frozen=True)
class ClimbPoint:
    steps: int  # Adam steps taken (0: the start, the source or its VAE round trip)
    p_yes_edit: float  # mean P(Yes) to the edit question
    p_yes_identity: float  # mean P(Yes) to the identity question
    made: float  # share of outputs where the verifier finds the edit made (realism aside)
    asked_colour: float | None  # share whose named object's interior is nearest the asked colour (local colour)
    source_colour: float | None  # share whose named object's interior is still nearest its source colour
    change: float  # mean absolute change from the source, 0-255
    success: float = 0.0  # share the verifier calls successful: the edit made and the output a clean world scene


@dataclass(frozen=True)
class TeacherPrior:
    """The trainer's DMD term (paper eqn. 5) on each edit's caption, with its fake score as it starts (the teacher
    unguided), at `weight` against the VLM loss at the recipe's lambda_vlm; the climb goes through the teacher's
    latent."""
    teacher: object  # a Backbone: encode_images, decode_latents, encode_text, predict_velocity
    weight: float
    loss: LossConfig = LossConfig()

    def dmd(self, latents: torch.Tensor, captions, negative, generator: torch.Generator) -> torch.Tensor:
        """The DMD loss of `latents`, noised to a time drawn as the trainer draws it, guided as it guides."""
        with torch.no_grad():
            t = self.loss.dmd_t_min + (self.loss.dmd_t_max - self.loss.dmd_t_min) * torch.rand(
                latents.shape[0], generator=generator)
            x_t = noise_to(latents.detach(), torch.randn(latents.shape, generator=generator), t)
            v_pos, v_neg = self.teacher.predict_velocity(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                                         captions.concat(negative)).chunk(2)
            x0_real = x0_from_velocity(x_t, t, guided_velocity(v_pos, v_neg, self.loss.cfg_scale))
            x0_fake = x0_from_velocity(x_t, t, v_pos)
        return dmd_loss(latents, x0_real, x0_fake).mean() * self.weight / self.loss.lambda_vlm


CLIMBED_EDIT_TYPES = ("local_color_change", "remove")


def measurable(edits: list[WorldEdit], edit_type: str = "local_color_change") -> list[WorldEdit]:
    """The edits of `edit_type` among `edits` a climb can be read on: local colour edits whose named object has an
    interior to read its colour from; every removal."""
    if edit_type not in CLIMBED_EDIT_TYPES:
        raise ValueError(f"the climb is measured on {' or '.join(CLIMBED_EDIT_TYPES)} edits, not {edit_type!r}")
    return [e for e in edits if e.edit_type == edit_type and (edit_type == "remove" or _interior(e).any())]


def climb_questions(edit: WorldEdit, presence: bool = False) -> list[Question]:
    """The trainer's questions about `edit`; with `presence`, a local colour edit's edit question asked as a removal's
    is, of the output alone: does it contain the object as the edit leaves it (Yes), and as it was (No)?"""
    asked = questions_for(edit.edit_type, edit.instruction, edit.target_object)
    if not presence or edit.edit_type == "remove":
        return asked
    if edit.edit_type != "local_color_change":
        raise ValueError(f"presence questions are asked of local colour edits here, not {edit.edit_type!r}")
    before, after = edit.source.object_at(edit.cell), edit.target.object_at(edit.cell)
    return [presence_question(after.name, "Yes"), presence_question(before.name, "No"),
            *[q for q in asked if q.kind == "identity"]]


def made_log_odds(critic, edits: list[WorldEdit], sources: torch.Tensor, outputs: torch.Tensor, *,
                  presence: bool = False) -> torch.Tensor:
    """(questions, edits): the critic's log-odds, for each of each edit's questions (`climb_questions`) about its
    output beside its source, of the answer a made edit gets (Yes; No to "does it still contain"), as the VLM loss asks.
    The edits share one question layout (one edit type)."""
    shown, texts, signs = [], [], []
    for i, edit in enumerate(edits):
        for q in climb_questions(edit, presence):
            shown.append([sources[i] if role == REFERENCE else outputs[i] for role in q.images])
            texts.append(q.text)
            signs.append(1.0 if q.correct == "Yes" else -1.0)
    yes, no = critic.answer_logits(shown, texts)
    return (torch.tensor(signs) * (yes - no)).view(len(edits), -1).T


def _point(steps: int, edits: list[WorldEdit], sources: torch.Tensor, outputs: torch.Tensor,
           log_odds: torch.Tensor, kinds: list[str]) -> ClimbPoint:
    p_yes = torch.sigmoid(log_odds).mean(1)
    edit_rows, identity_rows = ([i for i, k in enumerate(kinds) if k == kind] for kind in ("edit", "identity"))
    scores = [score_edit(e, o) for e, o in zip(edits, outputs)]
    asked = source = None
    if edits[0].edit_type == "local_color_change":
        colours = [_nearest(_interior_means(e, o[None]))[0] for e, o in zip(edits, outputs)]
        asked = float(np.mean([c == e.target.object_at(e.cell).colour for e, c in zip(edits, colours)]))
        source = float(np.mean([c == _named_object(e).colour for e, c in zip(edits, colours)]))
    return ClimbPoint(steps, float(p_yes[edit_rows].mean()), float(p_yes[identity_rows].mean()),
                      float(np.mean([s.applied for s in scores])), asked, source,
                      float((outputs - sources).abs().mean() * 127.5), float(np.mean([s.success for s in scores])))


def climb_critic(critic, edits: list[WorldEdit], *, steps: tuple[int, ...] = (10, 30, 100), lr: float = 0.02,
                 vae=None, in_mask: bool = False, views: int = 1, noise: float = 0.0, prior: TeacherPrior | None = None,
                 follow_critic: bool = True, edit_type: str = "local_color_change",
                 presence: bool = False) -> tuple[list[ClimbPoint], torch.Tensor]:
    """Climb the critic's Yes from the sources of `edits` (those of `edit_type` a climb can be read on, `measurable`;
    their questions `climb_questions(edit, presence)`), in pixels
    (with `in_mask`, only inside each edit's mask: the named object, as an editor that keeps the rest) or, with `vae`,
    through its latent; each step's gradient the mean over `views` draws of N(0, noise^2) added to every image the
    critic sees. With `prior`, through its teacher's latent with its DMD term beside (or, without `follow_critic`,
    alone). The measures (on the clean images) at the start and after each of `steps`, and the outputs at the last.
    The critic's weights and their gradients are left as they were."""
    if in_mask and (vae is not None or prior is not None):
        raise ValueError("a climb through a latent changes every pixel: in_mask is for pixels")
    if not (follow_critic or prior):
        raise ValueError("a climb follows the critic, the teacher's DMD term or both")
    if views < 1 or noise < 0 or (views > 1 and noise == 0):
        raise ValueError(f"views of noise: {views} view(s) of noise {noise} (more than one view needs noise > 0)")
    edits = measurable(edits, edit_type)
    if not edits:
        raise Refused("no local colour edit with an object large enough to measure" if edit_type == "local_color_change"
                      else f"no {edit_type} edit to climb from")
    kinds = [q.kind for q in climb_questions(edits[0], presence)]
    log_odds_of = lambda shown_sources, shown_outputs: made_log_odds(  # noqa: E731
        critic, edits, shown_sources, shown_outputs, presence=presence)
    was_training = critic.model.training
    critic.model.eval()
    sources = renders([e.source for e in edits])
    generator = torch.Generator().manual_seed(0)
    if in_mask:
        mask = torch.from_numpy(np.stack([e.mask() for e in edits])).float()[:, None]
        start, look = torch.zeros_like(sources), (lambda v: (sources + v * mask).clamp(-1, 1))
    elif prior is not None:
        with torch.no_grad():
            start = prior.teacher.encode_images(sources)
            captions = prior.teacher.encode_text([caption(e.target) for e in edits])
            negative = prior.teacher.encode_text([prior.loss.negative_prompt]).repeat(len(edits))
        look = lambda v: prior.teacher.decode_latents(v).clamp(-1, 1)  # noqa: E731
    elif vae is None:
        start, look = sources.clone(), (lambda v: v.clamp(-1, 1))
    else:  # the latent normalised as the editor's backbone normalises it, so a step means what it means there
        scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
        with torch.no_grad():
            start = (vae.encode(sources).latent_dist.mode() - shift) * scale
        look = lambda v: vae.decode(v / scale + shift).sample.clamp(-1, 1)  # noqa: E731

    def noisy(images: torch.Tensor) -> torch.Tensor:
        return images + noise * torch.randn(images.shape, generator=generator) if noise else images

    variable = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=lr)
    points = []
    for step in range(max(steps) + 1):
        outputs = look(variable)
        if step == 0 or step in steps:
            with torch.no_grad():
                points.append(_point(step, edits, sources, outputs.detach(), log_odds_of(sources, outputs.detach()),
                                     kinds))
        if step == max(steps):
            break
        objective = torch.zeros(())
        if follow_critic:
            for _ in range(views):
                log_odds = log_odds_of(noisy(sources), noisy(outputs))
                objective = objective - F.logsigmoid(log_odds).sum(0).mean() / views
        if prior is not None:
            objective = objective + prior.dmd(variable, captions, negative, generator)
        (variable.grad,) = torch.autograd.grad(objective, variable)
        optimizer.step()
    critic.model.train(was_training)
    return points, outputs.detach()


def save_climb_grid(edits: list[WorldEdit], climbed: dict[str, torch.Tensor], path, rows: int = 8,
                    edit_type: str = "local_color_change"):
    """A PNG row per edit: the source, the target, then each climb's last output."""
    edits = measurable(edits, edit_type)
    sources, targets = renders([e.source for e in edits[:rows]]), renders([e.target for e in edits[:rows]])
    return save_labelled_rows(
        [(edit.instruction, [(to_pil(sources[i]), "source"), (to_pil(targets[i]), "target")]
          + [(to_pil(outputs[i]), label) for label, outputs in climbed.items()])
         for i, edit in enumerate(edits[:rows])], path)
