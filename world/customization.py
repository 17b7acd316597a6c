"""Customization in the world: put the object of an object-centric scene into a new scene, scored by the classical
parse. A case is what the corpus builder's object stages produce for a world image (the object's name, one of its
background captions), so the trainer's customization samples and these cases ask for the same thing.

- identity: the output holds an object of the reference's shape, colour and texture (wherever it stands);
- scene: the background colour and pattern are the new scene's, and an object (any) stands in the cell it names;
- success: the output parses as a world scene, with the new background and the reference's object in the named cell;
- copy: the output parses as the reference scene itself (the collapse the critic's copy question guards against).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from training.backbones.base import Backbone
from training.customization import customization_instruction
from world.builder_answers import background_scenes, object_name
from world.evaluate import mean_of
from world.scene import Scene, caption, object_centric_scene, render
from world.verify import as_array, parse_image
from world.vae import renders

CUSTOMIZATION_SEED = 30_000_101  # held-out cases: a stream no corpus, critic or teacher draw uses


@dataclass(frozen=True)
class CustomizationCase:
    reference: Scene  # object-centric: one large object in the centre on a plain background
    target: Scene  # the same object in the new scene
    object_name: str
    scene_caption: str

    @property
    def instruction(self) -> str:
        return customization_instruction(self.object_name, self.scene_caption)


@dataclass(frozen=True)
class CustomizationScore:
    success: bool
    identity: bool
    scene: bool
    copy: bool
    realism: bool


def held_out_customizations(n: int, *, seed: int = CUSTOMIZATION_SEED, size: int = 64) -> list[CustomizationCase]:
    """`n` cases on fresh object-centric scenes, the same list for the same arguments."""
    rng = random.Random(seed)
    return [random_customization(rng, size=size) for _ in range(n)]


def random_customization(rng: random.Random, *, size: int = 64) -> CustomizationCase:
    """A fresh object-centric reference and one new scene for its object, as the corpus's object stages write them."""
    reference = object_centric_scene(rng, size=size)
    target = background_scenes(reference, rng, count=1)[0]
    return CustomizationCase(reference, target, object_name(reference.objects[0]), caption(target, rng.randrange(3)))


def score_customization(case: CustomizationCase, output) -> CustomizationScore:
    """Identity, scene, success and copy of `output` (PIL image, array, or tensor in [-1, 1]) for `case`."""
    parsed = parse_image(as_array(output))
    wanted = case.target.objects[0]
    same = [o for o in parsed.objects if (o.shape, o.colour, o.texture) == (wanted.shape, wanted.colour, wanted.texture)]
    background = (parsed.background, parsed.pattern) == (case.target.background, case.target.pattern)
    scene = background and any(o.cell == wanted.cell for o in parsed.objects)
    placed = background and any(o.cell == wanted.cell for o in same)
    copy = parsed.realistic and parsed.key() == case.reference.key()
    return CustomizationScore(parsed.realistic and placed, bool(same), scene, copy, parsed.realistic)


def score_customizer(backbone: Backbone, cases: list[CustomizationCase], *, num_steps: int = 4,
                     sampler: str = "renoise", seed: int = 0, batch_size: int = 16,
                     grid: Path | None = None, grid_rows: int = 12) -> dict[str, float]:
    """Customize every case's reference and return the mean of each score (and n); optionally a verdict grid."""
    from training.sampling import edit_images

    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        outputs.append(edit_images(backbone, renders([c.reference for c in chunk]), [c.instruction for c in chunk],
                                   num_steps=num_steps, sampler=sampler, generator=generator))
    outputs = torch.cat(outputs)
    scores = [score_customization(c, o) for c, o in zip(cases, outputs)]
    if grid is not None:
        _save_grid(cases, outputs, scores, grid, grid_rows)
    summary = {name: mean_of(getattr(s, name) for s in scores) for name in asdict(scores[0])}
    return {**summary, "n": len(scores)}


def _save_grid(cases, outputs, scores, path: Path, rows: int) -> Path:
    from PIL import Image

    from training.visualize import save_edit_grid

    def verdict(case: CustomizationCase, score: CustomizationScore) -> str:
        """The verdict first: the grid's text cell cuts a long instruction off."""
        parts = [f"object {'kept' if score.identity else 'lost'}", f"scene {'right' if score.scene else 'wrong'}"]
        if score.copy:
            parts.append("a copy of the reference")
        return f"{'OK' if score.success else 'FAIL'}, {', '.join(parts)}\n[customize] {case.instruction}"

    as_image = lambda t: Image.fromarray(((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255)  # noqa: E731
                                         .astype(np.uint8))
    return save_edit_grid([render(c.reference) for c in cases[:rows]],
                          [verdict(c, s) for c, s in zip(cases[:rows], scores[:rows])],
                          [as_image(o) for o in outputs[:rows]], path, cell=128)
