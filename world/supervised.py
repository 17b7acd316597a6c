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
from world.edits import WorldEdit, ask_of_another_object, make_edit, make_invalid_edit, random_edit
from world.scene import caption, random_scene
from world.teacher import flow_matching_batch_loss, weighted_flow_matching_loss
from world.vae import renders


def train_supervised(teacher: str | Path, out_dir: Path, *, steps: int, batch_size: int = 8, lr: float = 1e-4,
                     seed: int = 0, edit_types: tuple[str, ...] = EDIT_TYPES, checkpoint_every: int = 0,
                     edit_weight: float = 1.0, beside_share: float = 0.0, group: int = 1,
                     identity_share: float = 0.0, whom_pairs: bool = False,
                     progress: bool = True) -> tuple[ZImageBackbone, list[dict[str, float]]]:
    """Fine-tune the teacher into an editor on rendered pairs (`edit_types` in turn); saves it to
    `out_dir/generator` (loadable as any editor checkpoint) and returns it with its loss curve. With
    `checkpoint_every`, `out_dir/checkpoints/step-N` (the trainer's layout, so `world score` draws its curve) every N
    steps and at the last, and a killed run continues from the latest one to the same weights. `edit_weight` > 1
    weighs the latent pixels an edit may change that much above the rest (a small object's recolouring is otherwise
    a few percent of the loss). `beside_share` of the steps are the teacher's own drawing instead (a single world scene
    from its caption, in the omni layout beside an unrelated scene as reference), a regulariser that keeps the
    instruction's tokens in use once the editor learns to copy its reference. With `group` > 1, each batch holds
    `batch_size / group` sources, each edited `group` ways (same type, other instructions) under the same noise and
    time: the flow-matching error the instruction cannot explain is then shared by a group, and its part of the
    gradient on how the output depends on the instruction cancels, leaving the instructions' differences.
    `identity_share` of the edits become their source returned unchanged, asked nothing or what
    `world.edits.make_invalid_edit` asks (an absent object, a colour it already has): "nothing else" taught by pairs.
    With `whom_pairs` (and `group` 2), a group's second edit is the same change asked of another object of the scene
    where it has one (`world.edits.ask_of_another_object`): two targets under one noise that differ only in whom the
    instruction names, "only this object" taught by pairs."""
    for name, share in (("steps drawn beside a reference", beside_share), ("edits returned unchanged", identity_share)):
        if not 0 <= share < 1:
            raise ValueError(f"the share of {name} is in [0, 1), not {share}")
    if group < 1 or batch_size % group:
        raise ValueError(f"the group ({group}) must be a positive divisor of the batch size ({batch_size})")
    if whom_pairs and group != 2:
        raise ValueError(f"whom pairs are groups of 2, not {group}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    backbone = ZImageBackbone.from_pretrained(teacher)
    backbone.transformer.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(backbone.transformer.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    models = {"generator": (backbone.transformer, optimizer)}
    recipe = json.dumps({"teacher": str(teacher), "batch_size": batch_size, "lr": lr, "seed": seed,
                         "edit_types": list(edit_types), "edit_weight": edit_weight,
                         **({"beside_share": beside_share} if beside_share else {}),
                         **({"group": group} if group > 1 else {}),
                         **({"identity_share": identity_share} if identity_share else {}),
                         **({"whom_pairs": True} if whom_pairs else {})}, indent=2)
    history = _resume(out_dir, models, rng, recipe)
    for step in tqdm(range(len(history), steps), desc="supervised editor", disable=not progress,
                     initial=len(history), total=steps):
        if beside_share and rng.random() < beside_share:
            scenes = [random_scene(rng) for _ in range(batch_size)]
            loss = flow_matching_batch_loss(backbone, scenes, [caption(s, rng.randrange(3)) for s in scenes],
                                            beside=[random_scene(rng) for _ in scenes])
            _step(backbone, optimizer, loss)
            history.append({"step": step + 1, "loss/beside_reference": loss.item()})
            _checkpoint(out_dir, step + 1, steps, checkpoint_every, backbone, models, history, rng, recipe)
            continue
        sources_per_batch = batch_size // group
        edits = [edit for i in range(sources_per_batch) for edit in _edited_ways(
            random_edit(rng, edit_types[(step * sources_per_batch + i) % len(edit_types)]), group, rng, whom_pairs)]
        if identity_share:
            edits = [_unchanged(edit.source, rng) if rng.random() < identity_share else edit for edit in edits]
        with torch.no_grad():
            sources = renders([e.source for e in edits])
            reference = backbone.encode_images(sources)
            x0 = backbone.encode_images(renders([e.target for e in edits]))
            text = backbone.encode_text([e.instruction for e in edits], num_references=1, reference_images=sources)
        # the sampler's grid goes through the same shift; a group shares its time and noise
        t = backbone.shift_time(torch.rand(sources_per_batch)).repeat_interleave(group)
        eps = torch.randn_like(x0[::group]).repeat_interleave(group, 0)
        v = backbone.predict_velocity(noise_to(x0, eps, t), t, text, reference=reference)
        if edit_weight == 1.0:
            loss = flow_matching_loss(v, x0, eps).mean()
        else:
            weights = 1 + (edit_weight - 1) * edit_masks(edits, x0.shape[-2:])
            loss = weighted_flow_matching_loss(v, x0, eps, weights).mean()
        _step(backbone, optimizer, loss)
        history.append({"step": step + 1, "loss/supervised": loss.item()})
        _checkpoint(out_dir, step + 1, steps, checkpoint_every, backbone, models, history, rng, recipe)
    backbone.transformer.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(out_dir / "generator")
    return backbone, history


def _edited_ways(edit, group: int, rng: random.Random, whom: bool = False) -> list:
    """`edit` and `group - 1` more edits of its source and type (another object or value where the scene has one;
    with `whom`, the same change asked of another object where one can take it)."""
    ways = [edit]
    if whom and (elsewhere := ask_of_another_object(rng, edit)) is not None:
        ways.append(elsewhere)
    while len(ways) < group:
        ways.append(make_edit(edit.source, edit.edit_type, rng) or edit)
    return ways


def _unchanged(scene, rng: random.Random) -> WorldEdit:
    """`scene` returned as it is, for an empty instruction (one time in three) or one that changes nothing."""
    if rng.random() < 1 / 3:
        return WorldEdit("local_color_change", "", scene, scene, None, valid=False, reason="nothing is asked")
    return make_invalid_edit(scene, rng)


def _step(backbone: ZImageBackbone, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(backbone.transformer.parameters(), 1.0)
    optimizer.step()


def _checkpoint(out_dir: Path, step: int, steps: int, every: int, backbone: ZImageBackbone, models: dict,
                history: list, rng: random.Random, recipe: str) -> None:
    """The train state at every `every`-th step and at the last (none when `every` is 0)."""
    if every and (step % every == 0 or step == steps):
        ranks = [{"rng": torch.get_rng_state(), "edits_rng": rng.getstate()}]
        meta = {"step": step, "history": history, "ranks": ranks}
        save_checkpoint(out_dir, step, backbone, models, meta, recipe, keep=steps // every + 1)


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
