"""Critic questions on renders drawn the way editors draw them, each answered by the classical verifier.

A critic trained on clean renders is right about clean renders and about little else (findings, section 12): an
editor's outputs are near-copies, half-made edits and soft blobs decoded through the VAE. A pretrained VLM has seen
every kind of degraded image; this critic gets the world's version of that: the source, the target, a blend of the
two inside the edit's mask or the target with one more change, then some of what editors do to an image (an object
softened or its colour drifted, the VAE's round trip with its latent blurred or noised, global blur and noise). What
the image then shows is for the verifier to say, not the render it came from, so the answers are the world's truth
about the image the critic sees. No editor is involved: `npedit world probe-critic` on real editors' outputs stays a
fair test of what the critic learns here.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from scipy import ndimage

from training.critics.qwen import QwenVLCritic
from world.critic import fit_critic, save_with_manifest
from world.critic_outputs import evaluate_on_outputs, output_questions
from world.edits import WorldEdit, random_edit
from world.questions import ALL_KINDS, KINDS, LabelledQuestion, extra_change
from world.scene import object_coverage, render
from world.vae import invocation

HELD_OUT_DEGRADED_SEED = 50_000_002  # the degraded renders a critic is measured on (training draws from its own seed)


def _pixels(scene) -> np.ndarray:
    return np.asarray(render(scene), np.float32)


def _base_image(rng: random.Random, edit: WorldEdit) -> np.ndarray:
    """What the editor set out to draw: the target, the source (a copy), a half-made edit or one change too many."""
    roll = rng.random()
    if roll < 0.4:
        return _pixels(edit.target)
    if roll < 0.6:
        return _pixels(edit.source)
    if roll < 0.85:
        alpha = rng.uniform(0.25, 0.9) * edit.mask()[..., None]
        return alpha * _pixels(edit.target) + (1 - alpha) * _pixels(edit.source)
    changed = extra_change(rng, edit, edit.target)
    return _pixels(changed if changed is not None else edit.target)


def _soften_object(rng: random.Random, pixels: np.ndarray, edit: WorldEdit) -> np.ndarray:
    """One object's region blurred (a soft blob) or its colour drifted, the rest of the image as it was."""
    objects = edit.target.objects or edit.source.objects
    if not objects:
        return pixels
    obj = rng.choice(objects)
    region = ndimage.binary_dilation(object_coverage(obj, edit.source.size) > 0, iterations=2)[..., None]
    if rng.random() < 0.6:
        changed = ndimage.gaussian_filter(pixels, (rng.uniform(0.6, 2.5),) * 2 + (0,))
    else:
        changed = pixels + np.array([rng.gauss(0, 18) for _ in range(3)], np.float32)
    return np.where(region, changed, pixels)


def _round_trip(rng: random.Random, pixels: np.ndarray, vae: AutoencoderKL) -> np.ndarray:
    """Through the VAE as an editor's output comes, its latent sometimes blurred or noised on the way."""
    image = torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        latent = vae.encode(image).latent_dist.mode()
        if rng.random() < 0.4:
            noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(rng.getrandbits(32)))
            latent = latent + rng.uniform(0.05, 0.5) * latent.std() * noise
        if rng.random() < 0.3:
            smooth = torch.nn.functional.avg_pool2d(latent, 3, stride=1, padding=1, count_include_pad=False)
            weight = rng.uniform(0.2, 1.0)
            latent = weight * smooth + (1 - weight) * latent
        decoded = vae.decode(latent).sample.clamp(-1, 1)
    return (decoded[0].permute(1, 2, 0).numpy() + 1) * 127.5


def editor_like(rng: random.Random, edit: WorldEdit, vae: AutoencoderKL | None) -> np.ndarray:
    """An image an editor might output for `edit` (uint8 values as float32, (H, W, 3))."""
    pixels = _base_image(rng, edit)
    if rng.random() < 0.4:
        pixels = _soften_object(rng, pixels, edit)
    if vae is not None and rng.random() < 0.6:
        pixels = _round_trip(rng, pixels.clip(0, 255), vae)
    if rng.random() < 0.3:
        pixels = ndimage.gaussian_filter(pixels, (rng.uniform(0.4, 1.5),) * 2 + (0,))
    if rng.random() < 0.2:
        pixels = pixels + np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(2, 10), pixels.shape)
    return pixels.round().clip(0, 255).astype(np.float32)


class DegradedQuestions:
    """Draws the trainer's questions about editor-like images, kind and verifier answer equally likely: each draw
    picks a kind and an answer and makes degraded outputs of that kind's edit type until one gives it (keeping the
    questions made on the way for later draws; after `patience` outputs it takes the other answer)."""

    def __init__(self, vae: AutoencoderKL | None, *, kinds: tuple[str, ...] = KINDS, patience: int = 24,
                 keep: int = 32):
        self.vae, self.kinds, self.patience = vae, kinds, patience
        self.pool: dict[tuple[str, str], deque] = defaultdict(lambda: deque(maxlen=keep))

    def __call__(self, rng: random.Random) -> LabelledQuestion:
        kind, answer = rng.choice(self.kinds), rng.choice(("Yes", "No"))
        for _ in range(self.patience):
            if self.pool[kind, answer]:
                break
            edit = random_edit(rng, kind.split("/")[0])
            for question in output_questions(edit, editor_like(rng, edit, self.vae)):
                self.pool[question.kind, question.answer].append(question)
        found = self.pool[kind, answer] or self.pool[kind, "No" if answer == "Yes" else "Yes"]
        return found.popleft() if found else self(rng)


def degraded_question_set(seed: int, per_kind: int, vae: AutoencoderKL | None) -> list[LabelledQuestion]:
    """A fixed set of `per_kind` degraded questions for every editing kind, Yes and No as evenly as the verifier
    allows."""
    rng, draw = random.Random(seed), DegradedQuestions(vae)
    questions = []
    for kind in KINDS:
        draw.kinds = (kind,)
        questions += [draw(rng) for _ in range(per_kind)]
    return questions


def finetune_on_degraded(out_dir: Path, vae_path: Path, *, minutes: float, max_steps: int | None = None,
                         seed: int = 0, share: float = 0.5, batch_size: int = 32, lr: float = 2.5e-4,
                         aux_weight: float = 0.5, eval_every_s: float = 600, eval_per_kind: int = 24,
                         held_out_per_kind: int = 24, progress: bool = True) -> dict:
    """Continue the critic in `out_dir/critic/` with `share` of every batch about editor-like renders (made with the
    VAE at `vae_path`, answered by the verifier), the rest rendered questions of every kind, the rate annealed to zero;
    rewrites it and records this phase ("robust"), with its accuracy on held-out degraded renders before and after.
    A killed run resumes from `critic_robust_state.pt`."""
    out_dir = Path(out_dir)
    critic = QwenVLCritic.from_pretrained(out_dir / "critic", dtype=torch.float32)
    manifest = json.loads((out_dir / "critic" / "manifest.json").read_text())
    vae = AutoencoderKL.from_pretrained(vae_path, torch_dtype=torch.float32).eval()
    held_out = degraded_question_set(HELD_OUT_DEGRADED_SEED, held_out_per_kind, vae)
    before = evaluate_on_outputs(critic, held_out)
    facts, quality = fit_critic(critic, out_dir / "critic_robust_state.pt", minutes=minutes, max_steps=max_steps,
                                seed=seed + 4, batch_size=batch_size, lr=lr, anneal=True, aux_weight=aux_weight,
                                eval_every_s=eval_every_s, eval_per_kind=eval_per_kind, kinds=ALL_KINDS,
                                desc="world critic on degraded renders", progress=progress,
                                extra=DegradedQuestions(vae), extra_share=share,
                                extra_eval=lambda: evaluate_on_outputs(critic, held_out))
    quality["degraded_renders"] = evaluate_on_outputs(critic, held_out)
    manifest.update(quality=quality, robust={
        "vae": str(vae_path), "share": share, "seed": seed, "batch_size": batch_size, "lr": lr,
        "aux_weight": aux_weight, "before": before, **facts,
        "command": invocation()})
    return save_with_manifest(critic, out_dir / "critic", manifest)


__all__ = ["DegradedQuestions", "degraded_question_set", "editor_like", "finetune_on_degraded"]
