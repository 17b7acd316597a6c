"""Labelled critic questions on world images: the trainer's exact Yes/No questions (`training.questions`) asked
about world edits whose answers the world knows, with Yes and No equally likely within every question kind.

A kind is `<edit type>/<edit|identity>`, one per question the trainer asks. The "No" cases are the ways an editor
fails: nothing changed, the wrong change, the right change plus another one, an unrelated or ruined image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from schemas.edit_types import EDIT_TYPES
from training.questions import OUTPUT, REFERENCE, questions_for
from world.edits import WorldEdit, make_edit, random_edit
from world.scene import Scene, random_scene, render

KINDS = tuple(f"{edit_type}/{kind}" for edit_type in EDIT_TYPES for kind in ("edit", "identity"))


@dataclass(frozen=True)
class LabelledQuestion:
    """A question as the trainer asks it, the images it shows (in order) and the answer the world knows."""

    kind: str
    images: tuple[Image.Image | np.ndarray, ...]
    text: str
    answer: str  # "Yes" or "No"
    edit: WorldEdit  # the edit the question is about
    scenes: tuple[Scene | None, ...] = ()  # the scene each image shows (None: a ruined image)


def _other_edit(rng: random.Random, scene: Scene, edit: WorldEdit, *, same_type: bool) -> Scene | None:
    """A scene that `scene` becomes under a different edit than `edit` (the wrong change), or None."""
    for _ in range(20):
        edit_type = edit.edit_type if same_type else rng.choice([t for t in EDIT_TYPES if t != edit.edit_type])
        other = make_edit(scene, edit_type, rng)
        if other is not None and other.target.key() not in {edit.target.key(), scene.key()}:
            return other.target
    return None


def _extra_change(rng: random.Random, edit: WorldEdit, scene: Scene) -> Scene | None:
    """`scene` with one more change that `edit` does not ask for and that leaves what `edit` touched alone."""
    for _ in range(20):
        edit_type = rng.choice([t for t in EDIT_TYPES if t != edit.edit_type and t != "style"])
        other = make_edit(scene, edit_type, rng)
        if other is None or other.target.key() == scene.key():
            continue
        if edit.cell is not None and other.cell == edit.cell:
            continue
        if edit.edit_type == "remove" and other.edit_type == "insertion" and other.cell == edit.cell:
            continue
        return other.target
    return None


def _ruined(rng: random.Random, scene: Scene) -> np.ndarray:
    """What a broken editor emits: noise, or the scene blurred past recognition."""
    if rng.random() < 0.5:
        return np.random.default_rng(rng.getrandbits(32)).uniform(0, 255, (scene.size, scene.size, 3))
    return ndimage.gaussian_filter(np.asarray(render(scene), np.float32), (3, 3, 0))


def _no_output(rng: random.Random, edit: WorldEdit, kind: str):
    """An output for which the answer to `kind` is No."""
    source, target = edit.source, edit.target
    roll = rng.random()
    if roll < 0.1:
        return _ruined(rng, source)
    if roll < 0.2:
        return random_scene(rng, size=source.size)
    if kind == "identity":
        changed = _extra_change(rng, edit, target if rng.random() < 0.7 else source)
        return changed or random_scene(rng, size=source.size)
    if roll < 0.5:
        return source  # nothing happened
    return _other_edit(rng, source, edit, same_type=roll < 0.75) or source


def _yes_output(rng: random.Random, edit: WorldEdit, kind: str):
    """An output for which the answer to `kind` is Yes (an unchanged output preserves everything else too)."""
    if kind == "identity" and rng.random() < 0.25:
        return edit.source
    return edit.target


def _contains_case(rng: random.Random, edit: WorldEdit, answer: str):
    """For "Does this image contain X?": an image with X (the source, perhaps changed elsewhere) or without it."""
    if answer == "No":
        return edit.target if rng.random() < 0.7 else _extra_change(rng, edit, edit.target) or edit.target
    return edit.source if rng.random() < 0.6 else _extra_change(rng, edit, edit.source) or edit.source


def degrade(rng: random.Random, image) -> np.ndarray:
    """A rendered scene as a generator might draw it: sometimes a little soft, sometimes a little noisy."""
    pixels = np.asarray(render(image) if isinstance(image, Scene) else image, np.float32)
    if rng.random() < 0.4:
        pixels = ndimage.gaussian_filter(pixels, (rng.uniform(0.3, 0.9),) * 2 + (0,))
    if rng.random() < 0.3:
        pixels = pixels + np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(1, 6), pixels.shape)
    return pixels.clip(0, 255)


def labelled_question(rng: random.Random, kind: str, *, size: int = 64, augment: bool = True,
                      answer: str | None = None) -> LabelledQuestion:
    """One question of `kind` on a fresh world edit with the given answer (Yes or No with probability 1/2 if None)."""
    edit_type, question_kind = kind.split("/")
    edit = random_edit(rng, edit_type, size=size)
    question = next(q for q in questions_for(edit.edit_type, edit.instruction, edit.target_object)
                    if q.kind == question_kind)
    answer = answer or rng.choice(("Yes", "No"))
    if question.images == (OUTPUT,):
        output = _contains_case(rng, edit, answer)
        shown = (output,)
    else:
        right = answer == question.correct
        output = _yes_output(rng, edit, question_kind) if right else _no_output(rng, edit, question_kind)
        shown = tuple(edit.source if role == REFERENCE else output for role in question.images)
    look = (lambda x: degrade(rng, x)) if augment else (lambda x: np.asarray(render(x) if isinstance(x, Scene)
                                                                             else x, np.float32))
    scenes = tuple(x if isinstance(x, Scene) else None for x in shown)
    return LabelledQuestion(kind, tuple(look(x) for x in shown), question.text, answer, edit, scenes)


def question_set(seed: int, per_kind: int, *, size: int = 64, kinds=KINDS) -> list[LabelledQuestion]:
    """A fixed question set (e.g. held out): `per_kind` questions of every kind, Yes and No alternating, unaugmented."""
    rng = random.Random(seed)
    return [labelled_question(rng, kind, size=size, augment=False, answer=("Yes", "No")[i % 2])
            for kind in kinds for i in range(per_kind)]


__all__ = ["KINDS", "LabelledQuestion", "degrade", "labelled_question", "question_set"]
