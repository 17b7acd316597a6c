"""Scores of an edit's output against its source scene and instruction, from the classical parse alone.

- success: the output parses as a world scene and what the instruction names now holds (a removed object is gone,
  a recoloured one has its new colour at its place, ...);
- preservation: PSNR to the source render outside the edit's mask (NaN for a style edit, whose mask is the whole
  image), and whether every object the edit does not touch parses unchanged;
- realism: the output parses as a world scene (no fragments, no pixels that no world colour explains);
- applied: what the instruction names holds in the parse, realism aside. It separates "the editor made the edit" from
  "the editor drew it crisply": success is applied and realistic.
"""

from __future__ import annotations

from dataclasses import dataclass

from world.edits import WorldEdit
from world.scene import render
from world.verify import ParsedScene, as_array, parse_image, psnr


@dataclass(frozen=True)
class EditScore:
    success: bool
    preservation_db: float
    untouched_objects_kept: bool
    realism: bool
    applied: bool
    problems: tuple[str, ...] = ()


def claim_holds(edit: WorldEdit, parsed: ParsedScene) -> bool:
    """Whether the part of the scene the instruction names is as the target scene has it."""
    target = edit.target
    if edit.edit_type == "style":
        return parsed.style == target.style
    if edit.edit_type == "background":
        return parsed.background == target.background
    if edit.edit_type == "remove":
        gone = next(o for o in edit.source.objects if o.cell == edit.cell)
        return parsed.find(gone.shape, gone.colour) is None and parsed.object_at(edit.cell) is None
    wanted, found = target.object_at(edit.cell), parsed.object_at(edit.cell)
    if found is None:
        return False
    if edit.edit_type in ("insertion", "replace"):
        return (found.shape, found.colour) == (wanted.shape, wanted.colour)
    if edit.edit_type == "local_texture":
        return (found.shape, found.colour, found.texture) == (wanted.shape, wanted.colour, wanted.texture)
    return (found.shape, found.colour) == (wanted.shape, wanted.colour)  # shape or colour change


def score_edit(edit: WorldEdit, output, parsed: ParsedScene | None = None) -> EditScore:
    """Success, preservation and realism of `output` (PIL image, array, or tensor in [-1, 1]) for `edit`; `parsed` is
    the output's parse when the caller already has it."""
    pixels = as_array(output)
    parsed = parsed or parse_image(pixels)
    mask = edit.mask()
    untouched = [o for o in edit.source.objects if o.cell != edit.cell]
    if edit.edit_type in ("style", "background"):
        kept = all(parsed.object_at(o.cell) is not None and parsed.object_at(o.cell).key()[:2] == o.key()[:2]
                   for o in untouched)
    else:
        kept = all(parsed.object_at(o.cell) is not None and parsed.object_at(o.cell).key() == o.key()
                   for o in untouched)
    applied = claim_holds(edit, parsed)
    return EditScore(success=parsed.realistic and applied,
                     preservation_db=psnr(pixels, render(edit.source), where=~mask) if (~mask).any() else float("nan"),
                     untouched_objects_kept=kept, realism=parsed.realistic, applied=applied,
                     problems=tuple(parsed.problems))
