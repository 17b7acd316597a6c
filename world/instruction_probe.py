"""Does an editor read the colour its instruction asks for? Each held-out local colour edit is asked for every colour
it may ask (no object's, not the background's), in one phrasing and with the same sampling noise; the named object's
interior in the outputs says whether the editor paints the asked colour, keeps the source's, or draws the same
whatever is asked (no spread). Beside it, how much the named object's interior changes when the instruction names
another object of the scene instead, or is empty: an editor that reads whom its instruction names changes it by
about the asked colour's distance from the source's; one blind to its instruction, not at all. And whether those two
outputs keep the source's colour, as they should ("only this object" and "nothing else"), and whether the other
object, when named, takes the asked colour."""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from schemas.errors import Refused
from training.sampling import edit_images
from training.visualize import save_labelled_rows, to_pil
from world.edits import WorldEdit, free_values, where_phrase
from world.scene import COLOURS, object_coverage, render
from world.vae import renders

PHRASING = "Make {target} {colour}"  # one of the world's own local colour phrasings
FIELDS = {"target", "colour", "shape", "where"}
PALETTE = np.array(list(COLOURS.values()), np.float32)


@dataclass(frozen=True)
class ColourFollowing:
    asked: float  # share of outputs whose object's interior is nearest the asked colour
    kept: float  # share nearest the source object's colour
    spread: float  # the interior's mean RGB, its standard deviation across the asked colours (0-255), mean over edits
    n: int  # outputs measured (edits x asked colours)
    other_object: float = 0.0  # the interior's mean |change| (0-255) when another object is named, mean over edits
    empty: float = 0.0  # the same when the instruction is empty
    kept_when_empty: float = float("nan")  # share of empty instructions whose output keeps the source's colour
    kept_when_other_named: float = float("nan")  # the same when another object of the scene is named
    other_painted_when_named: float = float("nan")  # share of those outputs whose other, named object is in the asked
    # colour (an editor that reads whom its instruction names paints it and keeps the first)
    shown: tuple = ()  # the first edits' (edit, asked colours, outputs, nearest colours), for `grid_rows`


def check_phrasing(phrasing: str) -> str:
    """`phrasing`, or a one-line `Refused` when it names a field other than {target}, {colour}, {shape}, {where} or
    lacks one of the first two."""
    try:
        named = {field for _, field, _, _ in string.Formatter().parse(phrasing) if field is not None}
    except ValueError as error:
        raise Refused(f"phrasing {phrasing!r} is not a format string: {error}") from None
    if named - FIELDS or not {"target", "colour"} <= named:
        raise Refused(f"phrasing {phrasing!r} must name {{target}} and {{colour}} (and may name {{shape}}, {{where}}), "
                      f"not {', '.join(sorted(named - FIELDS)) or 'only part of them'}")
    return phrasing


def asks(edit: WorldEdit, phrasing: str = PHRASING) -> list[tuple[str, str]]:
    """(asked colour, instruction) for every colour a local colour edit of this scene may ask."""
    obj = _named_object(edit)
    return [(colour, phrasing.format(target=edit.target_object, colour=colour, shape=obj.shape,
                                     where=where_phrase(obj.cell)))
            for colour in free_values(edit.source, "colour", COLOURS)]


def measure(edit: WorldEdit, asked: list[str], outputs: torch.Tensor) -> tuple[int, int, float, list[str]]:
    """For outputs (K,3,H,W) in [-1, 1] of one edit asked for `asked` colours: how many are nearest the asked colour,
    how many nearest the source's, the spread of the interior's mean RGB across them, and each one's nearest."""
    obj = _named_object(edit)
    means = _interior_means(edit, outputs)
    nearest = _nearest(means)
    return (sum(n == a for n, a in zip(nearest, asked)), sum(n == obj.colour for n in nearest),
            float(means.std(0).mean()), nearest)


def _interior_means(edit: WorldEdit, outputs: torch.Tensor) -> np.ndarray:
    """(K, 3): each output's mean RGB (0-255) over the named object's interior."""
    return ((outputs.permute(0, 2, 3, 1).cpu().numpy() + 1) * 127.5)[:, _interior(edit)].mean(1)


def _nearest(means: np.ndarray) -> list[str]:
    return [list(COLOURS)[i] for i in np.argmin(((means[:, None] - PALETTE[None]) ** 2).sum(-1), 1)]


def keeps_source_colour(edit: WorldEdit, outputs: torch.Tensor) -> list[bool]:
    """Whether each output's named object is still nearest its source colour (what an empty instruction, or one naming
    another object, should leave)."""
    return [colour == _named_object(edit).colour for colour in _nearest(_interior_means(edit, outputs))]


def interior_change(edit: WorldEdit, output: torch.Tensor, other: torch.Tensor) -> float:
    """Mean absolute difference (0-255) of two outputs (3,H,W) in [-1, 1] over the named object's interior."""
    interior = torch.from_numpy(_interior(edit))
    return float(((output - other).abs() * 127.5)[:, interior].mean())


def other_object_edit(edit: WorldEdit) -> WorldEdit | None:
    """The same local colour edit naming another object of the scene (None when the edited one is alone): its
    `target_object` and `cell` are the other's, so the measures here read the other's interior."""
    obj = _named_object(edit)
    other = next((o for o in edit.source.objects if o.name != obj.name), None)
    return None if other is None else replace(edit, instruction=edit.instruction.replace(obj.name, other.name, 1),
                                              target_object=other.name, cell=other.cell)


def colour_following(backbone, edits: list[WorldEdit], *, phrasing: str = PHRASING, num_steps: int = 4,
                     seed: int = 0, grid_rows: int = 0) -> ColourFollowing:
    """The editor asked for every free colour on each local colour edit (objects too small to have an interior are
    skipped), each output with noise seeded `seed`; the first `grid_rows` measured edits' outputs kept in `shown`."""
    phrasing = check_phrasing(phrasing)
    asked_hits = kept = n = 0
    spreads, shown, other_object, empty, kept_when = [], [], [], [], {"empty": [], "other": []}
    other_painted = []
    for edit in edits:
        if edit.edit_type != "local_color_change" or not _interior(edit).any():
            continue
        colours, instructions = zip(*asks(edit, phrasing))
        named_other = other_object_edit(edit)
        swapped = [instructions[0].replace(edit.target_object, named_other.target_object, 1)] if named_other else []
        asked = list(instructions) + [""] + swapped
        with torch.no_grad():
            every = edit_images(backbone, renders([edit.source] * len(asked)), asked, num_steps=num_steps,
                                generator=[torch.Generator().manual_seed(seed) for _ in asked])
        outputs = every[: len(colours)]
        empty.append(interior_change(edit, every[0], every[len(colours)]))
        kept_when["empty"] += keeps_source_colour(edit, every[len(colours):len(colours) + 1])
        if swapped:
            other_object.append(interior_change(edit, every[0], every[-1]))
            kept_when["other"] += keeps_source_colour(edit, every[-1:])
            if _interior(named_other).any():
                other_painted += [colour == colours[0] for colour in _nearest(_interior_means(named_other, every[-1:]))]
        hits, same, spread, nearest = measure(edit, list(colours), outputs)
        asked_hits, kept, n = asked_hits + hits, kept + same, n + len(colours)
        spreads.append(spread)
        if len(shown) < grid_rows:
            shown.append((edit, colours, outputs, nearest))
    if not n:
        raise Refused("no local colour edit with an object large enough to measure")
    return ColourFollowing(asked_hits / n, kept / n, float(np.mean(spreads)), n, shown=tuple(shown),
                           other_object=float(np.mean(other_object)) if other_object else float("nan"),
                           empty=float(np.mean(empty)), kept_when_empty=float(np.mean(kept_when["empty"])),
                           kept_when_other_named=float(np.mean(kept_when["other"])) if kept_when["other"]
                           else float("nan"),
                           other_painted_when_named=float(np.mean(other_painted)) if other_painted else float("nan"))


def save_colour_grid(found: dict[str, ColourFollowing], path: Path, phrasing: str = PHRASING) -> Path:
    """A PNG of each measured editor's `shown` edits, a row per edit and editor: the editor and instruction, the
    source, then the output for each asked colour labelled "asked -> the interior's nearest colour"."""
    rows = []
    for label, following in found.items():
        for edit, colours, outputs, nearest in following.shown:
            obj = _named_object(edit)
            instruction = phrasing.format(target=edit.target_object, colour="...", shape=obj.shape,
                                          where=where_phrase(obj.cell))
            images = [(render(edit.source), "source")]
            images += [(to_pil(o), f"{a} -> {got}") for a, o, got in zip(colours, outputs, nearest)]
            rows.append((f"{label}\n{instruction}", images))
    return save_labelled_rows(rows, path)


def _interior(edit: WorldEdit) -> np.ndarray:
    """(H,W) bool: the pixels the named object covers wholly."""
    return object_coverage(_named_object(edit), edit.source.size) >= 1


def _named_object(edit: WorldEdit):
    return next(o for o in edit.source.objects if o.name == edit.target_object and o.cell == edit.cell)
