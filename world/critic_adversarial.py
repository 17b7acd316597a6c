"""Critic questions about images perturbed against the critic itself, each answered by the classical verifier.

NP-Edit's editor follows the critic's gradient. Climbing the committed critic's Yes from a held-out source, in pixels
or through the VAE's latent, reaches P(Yes) 0.97-0.99 with the named object's colour unchanged and the verifier
finding no edit (findings, section 30): its Yes is reachable by changes that are not the edit, which is what an
editor trained on few sources learns (section 29). Adversarial training is the standard cure, and a critic trained
so has gradients that look like the change they ask for. Here an editor-like image (`critic_robust.editor_like`) is
pushed by projected gradient steps toward the answers the verifier does not give (those of a made edit where it is
not made, and the reverse), within a small L-inf ball, and the critic learns the verifier's answer about the pushed
image. No editor is involved.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from schemas.edit_types import EDIT_TYPES
from training.critics.qwen import QwenVLCritic
from world.critic import _tensor, fit_critic, save_with_manifest
from world.critic_climb import made_log_odds
from world.critic_outputs import evaluate_on_outputs, output_questions
from world.critic_robust import editor_like
from world.edits import WorldEdit, random_edit
from world.questions import ALL_KINDS, LabelledQuestion
from world.vae import invocation, renders

HELD_OUT_ATTACK_SEED = 60_000_002  # the edits and start images robustness is measured on


@dataclass(frozen=True)
class AttackBudget:
    """Projected gradient steps in 0-255 pixel units: `steps` of `step_size` within `eps` of the start (L-inf)."""

    eps: float = 12.0
    steps: int = 5
    step_size: float = 4.0


def _edit_answer(edit: WorldEdit, pixels: np.ndarray) -> str:
    """The verifier's answer to the edit question about `pixels` as the output of `edit`."""
    return next(q.answer for q in output_questions(edit, pixels) if q.kind.endswith("/edit"))


def attack(critic: QwenVLCritic, edits: list[WorldEdit], starts: list[np.ndarray], toward_made: list[bool],
           budget: AttackBudget, generator: torch.Generator) -> list[np.ndarray]:
    """Each start image (the output of its edit) moved by projected gradient steps to raise (or, where `toward_made`
    is False, lower) the critic's log-odds of the answers a made edit gets, summed over the edit's questions as the
    trainer's VLM loss sums them; returned as 0-255 arrays rounded to whole values, as the questions show them."""
    was_training = critic.model.training
    critic.model.eval()
    sources = renders([e.source for e in edits])
    x0 = torch.stack([_tensor(s) for s in starts])
    eps, step = 2 * budget.eps / 255, 2 * budget.step_size / 255
    x = (x0 + (torch.rand(x0.shape, generator=generator) * 2 - 1) * eps).clamp(-1, 1)
    sign = torch.tensor([1.0 if made else -1.0 for made in toward_made])
    for _ in range(budget.steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad((sign * made_log_odds(critic, edits, sources, x)).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + step * grad.sign(), x0 - eps), x0 + eps).clamp(-1, 1)
    critic.model.train(was_training)
    return [((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255) for image in x.detach()]


def _attacked_questions(critic: QwenVLCritic, rng: random.Random, n: int, vae: AutoencoderKL | None,
                        budget: AttackBudget, edit_types: tuple[str, ...]) -> list[LabelledQuestion]:
    """The questions about `n` editor-like outputs of fresh edits, each pushed against the verifier's answer."""
    edits = [random_edit(rng, rng.choice(edit_types)) for _ in range(n)]
    starts = [editor_like(rng, edit, vae) for edit in edits]
    toward_made = [_edit_answer(edit, start) == "No" for edit, start in zip(edits, starts)]
    generator = torch.Generator().manual_seed(rng.getrandbits(32))
    pushed = attack(critic, edits, starts, toward_made, budget, generator)
    return [question for edit, image in zip(edits, pushed) for question in output_questions(edit, image)]


class AttackedQuestions:
    """Draws questions about images pushed against the critic as it is now, made `batch` edits at a time (each edit
    gives its edit and identity questions)."""

    def __init__(self, critic: QwenVLCritic, vae: AutoencoderKL | None, *, budget: AttackBudget = AttackBudget(),
                 batch: int = 8, edit_types: tuple[str, ...] = EDIT_TYPES):
        self.critic, self.vae, self.budget, self.batch, self.edit_types = critic, vae, budget, batch, edit_types
        self.pool: deque[LabelledQuestion] = deque()

    def __call__(self, rng: random.Random) -> LabelledQuestion:
        if not self.pool:
            questions = _attacked_questions(self.critic, rng, self.batch, self.vae, self.budget, self.edit_types)
            rng.shuffle(questions)
            self.pool.extend(questions)
        return self.pool.popleft()


def robustness(critic: QwenVLCritic, vae: AutoencoderKL | None, *, per_type: int = 8,
               budget: AttackBudget = AttackBudget(), edit_types: tuple[str, ...] = EDIT_TYPES) -> dict:
    """The critic's balanced accuracy on held-out editor-like outputs pushed against it (the same edits and start
    images every time, the push made against the critic as it is), per question kind."""
    rng = random.Random(HELD_OUT_ATTACK_SEED)
    questions = []
    for edit_type in edit_types:
        questions += _attacked_questions(critic, rng, per_type, vae, budget, (edit_type,))
    return evaluate_on_outputs(critic, questions)


def finetune_on_attacks(out_dir: Path, vae_path: Path | None, *, minutes: float, max_steps: int | None = None,
                        seed: int = 0, share: float = 0.25, budget: AttackBudget = AttackBudget(),
                        batch_size: int = 32, lr: float = 2.5e-4, aux_weight: float = 0.5,
                        eval_every_s: float = 600, eval_per_kind: int = 24, held_out_per_type: int = 8,
                        progress: bool = True) -> dict:
    """Continue the critic in `out_dir/critic/` with `share` of every batch about editor-like outputs pushed against
    it (`budget`; the VAE at `vae_path` makes the round trips), the rest rendered questions of every kind, the rate
    annealed to zero; rewrites it and records this phase ("adversarial") with its robustness before and after. A
    killed run resumes from `critic_adversarial_state.pt`."""
    out_dir = Path(out_dir)
    critic = QwenVLCritic.from_pretrained(out_dir / "critic", dtype=torch.float32)
    manifest = json.loads((out_dir / "critic" / "manifest.json").read_text())
    vae = AutoencoderKL.from_pretrained(vae_path, torch_dtype=torch.float32).eval() if vae_path else None

    def measured() -> dict:
        return robustness(critic, vae, per_type=held_out_per_type, budget=budget)

    before = measured()
    facts, quality = fit_critic(critic, out_dir / "critic_adversarial_state.pt", minutes=minutes,
                                max_steps=max_steps, seed=seed + 5, batch_size=batch_size, lr=lr, anneal=True,
                                aux_weight=aux_weight, eval_every_s=eval_every_s, eval_per_kind=eval_per_kind,
                                kinds=ALL_KINDS, desc="world critic on attacked outputs", progress=progress,
                                extra=AttackedQuestions(critic, vae, budget=budget), extra_share=share,
                                extra_eval=measured)
    quality["attacked_outputs"] = measured()
    manifest.update(quality=quality, adversarial={
        "vae": str(vae_path), "share": share, "budget": asdict(budget), "seed": seed, "batch_size": batch_size,
        "lr": lr, "aux_weight": aux_weight, "before": before, **facts, "command": invocation()})
    return save_with_manifest(critic, out_dir / "critic", manifest)


__all__ = ["AttackBudget", "AttackedQuestions", "attack", "finetune_on_attacks", "robustness"]
