"""The supervised baseline under control: the same editor (teacher-initialised Z-Image backbone, frozen text encoder,
the reference as an image condition) trained by flow matching on the world's rendered (source, instruction, target)
pairs, the data NP-Edit never sees. The experiment compares NP-Edit against it at equal compute."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from schemas.edit_types import EDIT_TYPES
from schemas.errors import Refused
from training.backbones import ZImageBackbone, noise_to
from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.losses import flow_matching_loss
from world.edits import random_edit
from world.teacher import weighted_flow_matching_loss
from world.vae import renders


def train_supervised(teacher: str | Path, out_dir: Path, *, steps: int, batch_size: int = 8, lr: float = 1e-4,
                     seed: int = 0, edit_types: tuple[str, ...] = EDIT_TYPES, checkpoint_every: int = 0,
                     edit_weight: float = 1.0, progress: bool = True) -> tuple[ZImageBackbone, list[dict[str, float]]]:
    """Fine-tune the teacher into an editor on rendered pairs (`edit_types` in turn); saves it to
    `out_dir/generator` (loadable as any editor checkpoint) and returns it with its loss curve. With
    `checkpoint_every`, `out_dir/checkpoints/step-N` (the trainer's layout, so `world score` draws its curve) every N
    steps and at the last, and a killed run continues from the latest one to the same weights. `edit_weight` > 1
    weighs the latent pixels an edit may change that much above the rest (a small object's recolouring is otherwise
    a few percent of the loss)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    backbone = ZImageBackbone.from_pretrained(teacher)
    backbone.transformer.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(backbone.transformer.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    models = {"generator": (backbone.transformer, optimizer)}
    recipe = json.dumps({"teacher": str(teacher), "batch_size": batch_size, "lr": lr, "seed": seed,
                         "edit_types": list(edit_types), "edit_weight": edit_weight}, indent=2)
    history = _resume(out_dir, models, rng, recipe)
    for step in tqdm(range(len(history), steps), desc="supervised editor", disable=not progress,
                     initial=len(history), total=steps):
        edits = [random_edit(rng, edit_types[(step * batch_size + i) % len(edit_types)]) for i in range(batch_size)]
        with torch.no_grad():
            sources = renders([e.source for e in edits])
            reference = backbone.encode_images(sources)
            x0 = backbone.encode_images(renders([e.target for e in edits]))
            text = backbone.encode_text([e.instruction for e in edits], num_references=1, reference_images=sources)
        t = backbone.shift_time(torch.rand(batch_size))  # the sampler's grid goes through the same shift
        eps = torch.randn_like(x0)
        v = backbone.predict_velocity(noise_to(x0, eps, t), t, text, reference=reference)
        if edit_weight == 1.0:
            loss = flow_matching_loss(v, x0, eps).mean()
        else:
            weights = 1 + (edit_weight - 1) * edit_masks(edits, x0.shape[-2:])
            loss = weighted_flow_matching_loss(v, x0, eps, weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.transformer.parameters(), 1.0)
        optimizer.step()
        history.append({"step": step + 1, "loss/supervised": loss.item()})
        if checkpoint_every and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            meta = {"step": step + 1, "history": history,
                    "ranks": [{"rng": torch.get_rng_state(), "edits_rng": rng.getstate()}]}
            save_checkpoint(out_dir, step + 1, backbone, models, meta, recipe, keep=steps // checkpoint_every + 1)
    backbone.transformer.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(out_dir / "generator")
    return backbone, history


def edit_masks(edits: list, size: tuple[int, int]) -> torch.Tensor:
    """(B,1,h,w) float: 1 on the latent pixels any of whose image pixels the edit may change."""
    masks = torch.from_numpy(np.stack([e.mask() for e in edits])).float()[:, None]
    return torch.nn.functional.adaptive_max_pool2d(masks, size)


def _resume(out_dir: Path, models: dict, rng: random.Random, recipe: str) -> list[dict[str, float]]:
    """Load the latest checkpoint under `out_dir` (weights, optimizer, both RNGs); the loss curve so far, or []."""
    path = latest_checkpoint(out_dir)
    if path is None:
        return []
    if json.loads((path / "config.json").read_text()) != json.loads(recipe):
        raise Refused(f"{path} is a supervised run with other settings ({path / 'config.json'}); use a new folder")
    meta = load_checkpoint(path, models)
    torch.set_rng_state(meta["ranks"][0]["rng"])
    rng.setstate(meta["ranks"][0]["edits_rng"])
    return meta["history"]
