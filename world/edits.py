"""Edits in the world: all 8 of the paper's edit types, each with instructions in several phrasings, the edited
scene, its caption and the mask of pixels the edit may change; invalid edits (absent object, no change) too."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from schemas.edit_types import EDIT_TYPES
from world.scene import (COLOURS, POSITIONS, SHAPES, STYLES, TEXTURES, Scene, caption,
                         object_coverage, random_object, random_scene, render, with_objects)

PHRASINGS: dict[str, tuple[str, ...]] = {
    "insertion": ("Add {new} {where}", "Put {new} {where}", "Place {new} {where}", "Draw {new} {where}"),
    "replace": ("Replace {target} with {new}", "Swap {target} for {new}", "Turn {target} into {new}"),
    "local_texture": ("Make {target} {texture}", "Give {target} a {texture} texture", "Paint {target} {texture}"),
    "shape_change": ("Turn {target} into a {shape}", "Reshape {target} into a {shape}",
                     "Change the shape of {target} to a {shape}"),
    "style": ("Render the picture {style}", "Make the whole image {style}", "Restyle the scene {style}"),
    "remove": ("Remove {target}", "Take {target} away", "Get rid of {target}", "Make {target} disappear",
               "Erase {target}", "Delete {target} from the picture"),
    "local_color_change": ("Make {target} {colour}", "Paint {target} {colour}",
                           "Change the colour of {target} to {colour}", "Recolour {target} {colour}"),
    "background": ("Change the background to {background}", "Make the background {background}",
                   "Replace the background with {background}"),
}
STYLE_WORDS = {"plain": "in plain bright colours", "pastel": "in pastel colours"}
TEXTURE_WORDS = {"plain": "plain", "striped": "striped"}


@dataclass(frozen=True)
class WorldEdit:
    """An instruction on a source scene, the scene it should produce, and what it acts on."""

    edit_type: str
    instruction: str
    source: Scene
    target: Scene
    target_object: str | None  # "the red circle" for edits on one object; None for insertion/style/background
    cell: int | None = None  # the cell an object edit acts on
    valid: bool = True
    reason: str = ""  # why an invalid edit is invalid

    @property
    def edited_caption(self) -> str | None:
        return caption(self.target) if self.valid else None

    def mask(self) -> np.ndarray:
        """(H, W) bool: the pixels the edit may change (a 1-pixel margin around what it touches)."""
        size = self.source.size
        if self.edit_type == "style":
            return np.ones((size, size), bool)
        if self.edit_type == "background":
            covered = np.zeros((size, size), bool)
            for obj in self.source.objects:
                covered |= object_coverage(obj, size) >= 1
            return ~covered
        touched = np.zeros((size, size), bool)
        before = {o.key(): o for o in self.source.objects}
        after = {o.key(): o for o in self.target.objects}
        for obj in [o for k, o in before.items() if k not in after] + [o for k, o in after.items() if k not in before]:
            touched |= object_coverage(obj, size) > 0
        return ndimage.binary_dilation(touched, iterations=1)


def _fill(edit_type: str, rng: random.Random, **fields) -> str:
    return rng.choice(PHRASINGS[edit_type]).format(**fields)


def _article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def where_phrase(cell: int) -> str:
    """Where a cell is, as the instructions say it ("at the top left", "in the center")."""
    return "in the center" if POSITIONS[cell] == "center" else f"at the {POSITIONS[cell]}"


def free_values(scene: Scene, attribute: str, universe) -> list:
    """The values of `attribute` no object (nor, for a colour, the background) has: what an edit may ask for."""
    taken = {getattr(o, attribute) for o in scene.objects} | ({scene.background} if attribute == "colour" else set())
    return [v for v in universe if v not in taken]


def make_edit(scene: Scene, edit_type: str, rng: random.Random) -> WorldEdit | None:
    """A valid edit of `edit_type` on `scene`, or None where the scene allows none (e.g. insertion into 3 objects)."""
    objects = list(scene.objects)
    obj = rng.choice(objects)
    others = [o for o in objects if o is not obj]
    if edit_type == "insertion":
        if len(objects) >= 3:
            return None
        new = random_object(rng, shape=rng.choice(free_values(scene, "shape", SHAPES)),
                            colour=rng.choice(free_values(scene, "colour", COLOURS)),
                            cell=rng.choice(free_values(scene, "cell", range(len(POSITIONS)))))
        text = _fill(edit_type, rng, new=_article(f"{new.colour} {new.shape}"), where=where_phrase(new.cell))
        return WorldEdit(edit_type, text, scene, with_objects(scene, objects + [new]), None, new.cell)
    if edit_type == "style":
        style = next(s for s in STYLES if s != scene.style)
        return WorldEdit(edit_type, _fill(edit_type, rng, style=STYLE_WORDS[style]), scene,
                         replace(scene, style=style), None)
    if edit_type == "background":
        colour = rng.choice(free_values(scene, "colour", COLOURS))
        target = replace(scene, background=colour)
        return WorldEdit(edit_type, _fill(edit_type, rng, background=colour), scene, target, None)
    if edit_type == "remove":
        if not others:
            return None
        return WorldEdit(edit_type, _fill(edit_type, rng, target=obj.name), scene, with_objects(scene, others),
                         obj.name, obj.cell)
    if edit_type == "replace":
        shape = rng.choice([s for s in SHAPES if s not in {o.shape for o in others} and s != obj.shape])
        colour = rng.choice(free_values(scene, "colour", COLOURS))
        new = replace(obj, shape=shape, colour=colour)
        text = _fill(edit_type, rng, target=obj.name, new=_article(f"{colour} {shape}"))
        return WorldEdit(edit_type, text, scene, with_objects(scene, others + [new]), obj.name, obj.cell)
    if edit_type == "local_texture":
        texture = next(t for t in TEXTURES if t != obj.texture)
        text = _fill(edit_type, rng, target=obj.name, texture=TEXTURE_WORDS[texture])
        return WorldEdit(edit_type, text, scene, with_objects(scene, others + [replace(obj, texture=texture)]),
                         obj.name, obj.cell)
    if edit_type == "shape_change":
        shape = rng.choice(free_values(scene, "shape", SHAPES))
        text = _fill(edit_type, rng, target=obj.name, shape=shape)
        return WorldEdit(edit_type, text, scene, with_objects(scene, others + [replace(obj, shape=shape)]),
                         obj.name, obj.cell)
    if edit_type == "local_color_change":
        colour = rng.choice(free_values(scene, "colour", COLOURS))
        text = _fill(edit_type, rng, target=obj.name, colour=colour)
        return WorldEdit(edit_type, text, scene, with_objects(scene, others + [replace(obj, colour=colour)]),
                         obj.name, obj.cell)
    raise ValueError(f"unknown edit type {edit_type!r}; known: {', '.join(EDIT_TYPES)}")


def make_invalid_edit(scene: Scene, rng: random.Random) -> WorldEdit:
    """An instruction the validity stage should reject: it names an absent object, or changes nothing."""
    if rng.random() < 0.5:
        shape = rng.choice(free_values(scene, "shape", SHAPES) or list(SHAPES))
        colour = rng.choice(free_values(scene, "colour", COLOURS))
        absent = f"the {colour} {shape}"
        edit_type = rng.choice(("remove", "local_color_change", "shape_change"))
        fields = dict(target=absent, colour=rng.choice(list(COLOURS)), shape=rng.choice(SHAPES))
        return WorldEdit(edit_type, _fill(edit_type, rng, **fields), scene, scene, absent, valid=False,
                         reason="the object is not in the image")
    obj = rng.choice(scene.objects)
    if rng.random() < 0.5:
        text = _fill("local_color_change", rng, target=obj.name, colour=obj.colour)
        return WorldEdit("local_color_change", text, scene, scene, obj.name, obj.cell, valid=False,
                         reason="the edit changes nothing")
    text = _fill("background", rng, background=scene.background)
    return WorldEdit("background", text, scene, scene, None, valid=False, reason="the edit changes nothing")


def change_another_object(rng: random.Random, edit: WorldEdit, scene: Scene) -> Scene | None:
    """`scene` (the edit's source or target) with the change `edit` asks of its named object made to another object
    of the scene (on the source: instead of it; on the target: as well): what an editor blind to whom its instruction
    names makes. None where the edit names no object or the scene has no other one that the change would alter."""
    if edit.target_object is None or edit.cell is None:
        return None
    named, after = edit.source.object_at(edit.cell), edit.target.object_at(edit.cell)
    others = [o for o in scene.objects if o.cell != edit.cell]
    if not others:
        return None
    other = rng.choice(others)
    kept = [o for o in scene.objects if o is not other]
    if not kept:
        return None
    if edit.edit_type == "remove":
        return with_objects(scene, kept)
    changed = replace(other, **{attribute: getattr(after, attribute) for attribute in ("shape", "colour", "texture")
                                if getattr(after, attribute) != getattr(named, attribute)})
    if changed.key() == other.key() or changed.colour == scene.background or any(
            o.shape == changed.shape or o.colour == changed.colour for o in kept):
        return None  # the other already looks so, or would share a shape or colour with another (no world scene)
    return with_objects(scene, kept + [changed])


def ask_of_another_object(rng: random.Random, edit: WorldEdit) -> WorldEdit | None:
    """The change `edit` asks of its named object asked of another object of its source instead, the instruction
    naming that one (None where `change_another_object` finds none)."""
    target = change_another_object(rng, edit, edit.source)
    if target is None:
        return None
    other = next(o for o in edit.source.objects if o not in target.objects)
    return WorldEdit(edit.edit_type, edit.instruction.replace(edit.target_object, other.name, 1), edit.source, target,
                     other.name, other.cell)


def random_edit(rng: random.Random, edit_type: str | None = None, *, size: int = 64) -> WorldEdit:
    """A valid edit of the given (or a random) type on a fresh random scene; scenes that cannot take it are redrawn."""
    edit_type = edit_type or rng.choice(EDIT_TYPES)
    while True:
        edit = make_edit(random_scene(rng, size=size), edit_type, rng)
        if edit is not None:
            return edit


__all__ = ["PHRASINGS", "WorldEdit", "ask_of_another_object", "change_another_object", "make_edit",
           "make_invalid_edit", "random_edit", "render"]
