"""Labelled critic questions on world images: the trainer's exact Yes/No questions (`training.questions`) asked
about world edits whose answers the world knows, with Yes and No equally likely within every question kind.

A kind is `<edit type>/<edit|identity>`, one per question the trainer asks. The "No" cases are the ways an editor
fails: nothing changed, the wrong change, the asked change made to another object of the scene (instead of the named
one, or as well), the right change plus another one, an unrelated or ruined image.
Customization has its own kinds, `customization/<identity|edit|copy>` (`CUSTOMIZATION_KINDS`), on an object-centric
reference and the object put into a new scene; the "No" cases there are the object changed, the scene wrong in one
respect, and the reference returned as it is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from schemas.edit_types import EDIT_TYPES
from training.customization import CUSTOMIZATION, customization_questions
from training.questions import OUTPUT, REFERENCE, questions_for
from world.builder_answers import background_scenes
from world.customization import CustomizationCase, random_customization
from world.edits import WorldEdit, change_another_object, make_edit, random_edit
from world.scene import COLOURS, POSITIONS, SHAPES, TEXTURES, Scene, random_scene, render

KINDS = tuple(f"{edit_type}/{kind}" for edit_type in EDIT_TYPES for kind in ("edit", "identity"))
CUSTOMIZATION_KINDS = tuple(f"{CUSTOMIZATION}/{kind}" for kind in ("identity", "edit", "copy"))
ALL_KINDS = KINDS + CUSTOMIZATION_KINDS


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


def extra_change(rng: random.Random, edit: WorldEdit, scene: Scene) -> Scene | None:
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
        changed = (change_another_object(rng, edit, target if roll < 0.3 else source) if roll < 0.4 else None) \
            or extra_change(rng, edit, target if rng.random() < 0.7 else source)
        return changed or random_scene(rng, size=source.size)
    if roll < 0.45:
        return source  # nothing happened
    if roll < 0.6:
        return change_another_object(rng, edit, source) or source
    return _other_edit(rng, source, edit, same_type=roll < 0.8) or source


def _yes_output(rng: random.Random, edit: WorldEdit, kind: str):
    """An output for which the answer to `kind` is Yes (an unchanged output preserves everything else too)."""
    if kind == "identity" and rng.random() < 0.25:
        return edit.source
    return edit.target


def _contains_case(rng: random.Random, edit: WorldEdit, answer: str):
    """For "Does this image contain X?": an image with X (the source, perhaps changed elsewhere) or without it."""
    if answer == "No":
        return edit.target if rng.random() < 0.7 else extra_change(rng, edit, edit.target) or edit.target
    return edit.source if rng.random() < 0.6 else extra_change(rng, edit, edit.source) or edit.source


def degrade(rng: random.Random, image) -> np.ndarray:
    """A rendered scene as a generator might draw it: sometimes a little soft, sometimes a little noisy."""
    pixels = np.asarray(render(image) if isinstance(image, Scene) else image, np.float32)
    if rng.random() < 0.4:
        pixels = ndimage.gaussian_filter(pixels, (rng.uniform(0.3, 0.9),) * 2 + (0,))
    if rng.random() < 0.3:
        pixels = pixels + np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(1, 6), pixels.shape)
    return pixels.clip(0, 255)


def _altered_object(rng: random.Random, scene: Scene) -> Scene:
    """`scene` with its one object changed in colour, shape or texture: another object in the same place."""
    obj = scene.objects[0]
    attribute = rng.choice(("colour", "shape", "texture"))
    if attribute == "colour":
        changed = replace(obj, colour=rng.choice([c for c in COLOURS if c not in (obj.colour, scene.background)]))
    elif attribute == "shape":
        changed = replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
    else:
        changed = replace(obj, texture=next(t for t in TEXTURES if t != obj.texture))
    return replace(scene, objects=(changed,))


def _near_scene(rng: random.Random, case: CustomizationCase) -> Scene:
    """The case's target scene wrong in exactly one respect: its background colour, its pattern or the object's cell."""
    target, obj = case.target, case.target.objects[0]
    attribute = rng.choice(("background", "pattern", "cell"))
    if attribute == "background":
        return replace(target, background=rng.choice([c for c in COLOURS if c not in (target.background, obj.colour)]))
    if attribute == "pattern":
        return replace(target, pattern=next(t for t in TEXTURES if t != target.pattern))
    cell = rng.choice([c for c in range(len(POSITIONS)) if c != obj.cell])
    return replace(target, objects=(replace(obj, cell=cell),))


def _elsewhere(rng: random.Random, case: CustomizationCase) -> Scene:
    """The reference's object in a new scene other than the case's target."""
    return next(s for s in background_scenes(case.reference, rng, count=2) if s.key() != case.target.key())


def _unrelated(rng: random.Random, case: CustomizationCase) -> Scene:
    """A random world scene without the reference's object (no object of its shape, colour and texture)."""
    wanted = case.reference.objects[0]
    while True:
        scene = random_scene(rng, size=case.reference.size)
        if all((o.shape, o.colour, o.texture) != (wanted.shape, wanted.colour, wanted.texture) for o in scene.objects):
            return scene


def _customization_output(rng: random.Random, case: CustomizationCase, kind: str, right: bool):
    """An output for which the customization question `kind` has its correct answer (`right`) or the other one."""
    if kind == "copy":  # correct: No, the output is not the reference
        if not right:
            return case.reference
        near = _near_scene(rng, case)  # rarely, moving the object back to the centre remakes the reference
        return rng.choice((case.target, case.target, _elsewhere(rng, case),
                           case.target if near.key() == case.reference.key() else near, _unrelated(rng, case)))
    if right:
        if kind == "edit":
            return case.target
        return rng.choices((case.target, _elsewhere(rng, case), case.reference), weights=(0.6, 0.25, 0.15))[0]
    roll = rng.random()
    if roll < 0.1:
        return _ruined(rng, case.target)
    if roll < 0.2:
        return _unrelated(rng, case)
    if kind == "identity":
        return _altered_object(rng, case.target if roll < 0.7 else _elsewhere(rng, case))
    if roll < 0.4:
        return case.reference  # the copy: the right object in the reference's own scene
    return _near_scene(rng, case) if roll < 0.75 else _altered_object(rng, case.target)


def _customization_case(rng: random.Random, question_kind: str, answer: str, size: int):
    """The edit record, question and shown images of one customization question with the given answer."""
    case = random_customization(rng, size=size)
    edit = WorldEdit(CUSTOMIZATION, case.instruction, case.reference, case.target, case.object_name)
    question = next(q for q in customization_questions(case.object_name, case.scene_caption)
                    if q.kind == question_kind)
    output = _customization_output(rng, case, question_kind, answer == question.correct)
    return edit, question, tuple(case.reference if role == REFERENCE else output for role in question.images)


def labelled_question(rng: random.Random, kind: str, *, size: int = 64, augment: bool = True,
                      answer: str | None = None) -> LabelledQuestion:
    """One question of `kind` on a fresh world edit with the given answer (Yes or No with probability 1/2 if None)."""
    edit_type, question_kind = kind.split("/")
    answer = answer or rng.choice(("Yes", "No"))
    if edit_type == CUSTOMIZATION:
        edit, question, shown = _customization_case(rng, question_kind, answer, size)
    else:
        edit = random_edit(rng, edit_type, size=size)
        question = next(q for q in questions_for(edit.edit_type, edit.instruction, edit.target_object)
                        if q.kind == question_kind)
        if question.images == (OUTPUT,):
            shown = (_contains_case(rng, edit, answer),)
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


def wrong_object_questions(seed: int, per_kind: int, *, size: int = 64) -> list[LabelledQuestion]:
    """A fixed set of "only this object" questions, `per_kind` for every object edit's edit and identity question:
    the output is the asked change made to another object (the named one left as it is for the edit question, changed
    as asked or left for the identity one), so the right answer is always the one an editor should be refused."""
    rng = random.Random(seed)
    found = []
    for kind in KINDS:
        edit_type, question_kind = kind.split("/")
        if edit_type in ("insertion", "style", "background"):
            continue
        made = 0
        while made < per_kind:
            edit = random_edit(rng, edit_type, size=size)
            on = edit.source if question_kind == "edit" or rng.random() < 0.5 else edit.target
            output = change_another_object(rng, edit, on)
            if output is None:
                continue
            question = next(q for q in questions_for(edit.edit_type, edit.instruction, edit.target_object)
                            if q.kind == question_kind)
            shown = tuple(edit.source if role == REFERENCE else output for role in question.images)
            answer = {"Yes": "No", "No": "Yes"}[question.correct]
            found.append(LabelledQuestion(kind, tuple(np.asarray(render(x), np.float32) for x in shown), question.text,
                                          answer, edit, shown))
            made += 1
    return found


__all__ = ["ALL_KINDS", "CUSTOMIZATION_KINDS", "KINDS", "LabelledQuestion", "degrade", "extra_change", "labelled_question",
           "question_set", "wrong_object_questions"]
