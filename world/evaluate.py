"""Score an editor on held-out world edits with the classical verifier: per edit type, success, preservation outside
the edit mask and realism, plus a PNG grid (input | instruction + verdict | output)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from schemas.edit_types import EDIT_TYPES
from training.backbones.base import Backbone
from training.sampling import edit_images
from world.edits import WorldEdit, random_edit
from world.scene import Scene, render
from world.score import EditScore, score_edit
from world.vae import renders

EVAL_SEED = 30_000_001  # held-out edits: no corpus, critic or teacher draw comes from this stream


@dataclass(frozen=True)
class TypeScores:
    """One edit type's means over its held-out edits."""

    success: float
    preservation_db: float | None  # None where no edit of the type leaves pixels outside its mask (style)
    realism: float
    untouched_objects_kept: float
    applied: float
    n: int


def held_out_edits(per_type: int, *, seed: int = EVAL_SEED, edit_types=EDIT_TYPES, size: int = 64) -> list[WorldEdit]:
    """`per_type` valid edits of every type on fresh scenes, the same list for the same arguments."""
    rng = random.Random(seed)
    return [random_edit(rng, edit_type, size=size) for edit_type in edit_types for _ in range(per_type)]


def training_edits(lake_dir: Path, per_type: int, *, edit_types=EDIT_TYPES) -> list[WorldEdit]:
    """Up to `per_type` of each type's valid edits in a world snapshot (the latest in `lake_dir`), the edits an editor
    trained on, as world edits: the source is the scene the image was rendered from (its name holds the corpus seed
    and index), the target the edited caption's scene. Scoring an editor on these beside held-out edits separates
    learning the corpus from learning to edit."""
    from datasets_builder.lake import LakeConfig, read_table, resolve
    from world.corpus import WORLD_IMAGE, world_scenes
    from world.scene import parse_caption

    lake = LakeConfig.of(str(lake_dir))
    snapshot = resolve(lake, None).snapshot_id
    images = read_table(lake, "images", snapshot, ["image_id", "source"]).to_pylist()
    named = {r["image_id"]: WORLD_IMAGE.search(r["source"]) for r in images}
    named = {image: (int(m["seed"]), int(m["index"])) for image, m in named.items() if m}
    scenes = {seed: world_scenes(1 + max(i for s, i in named.values() if s == seed), seed)
              for seed in {s for s, _ in named.values()}}
    rows = read_table(lake, "edit_instructions", snapshot,
                      ["proposal_id", "image_id", "edit_type", "instruction", "edited_caption", "is_valid"])
    found: dict[str, list[WorldEdit]] = {t: [] for t in edit_types}
    for row in sorted(rows.to_pylist(), key=lambda r: r["proposal_id"]):
        kept = found.get(row["edit_type"])
        if kept is None or len(kept) >= per_type or not row["is_valid"] or row["image_id"] not in named:
            continue
        seed, index = named[row["image_id"]]
        kept.append(_world_edit(row, scenes[seed][index], parse_caption(row["edited_caption"])))
    return [edit for edits in found.values() for edit in edits]


def _world_edit(row: dict, source: Scene, caption_scene: Scene) -> WorldEdit:
    """A corpus edit as a world edit; the target keeps the source's objects (jitter included) where the edited caption
    keeps them, and a changed object keeps its place in the cell."""
    def placed(obj):
        """`obj` with the jitter of the source's object in its cell, if there is one."""
        there = source.object_at(obj.cell)
        return replace(obj, dx=there.dx, dy=there.dy) if there else obj

    before = {o.key(): o for o in source.objects}
    objects = tuple(before.get(o.key()) or placed(o) for o in caption_scene.objects)
    target = replace(caption_scene, objects=objects, size=source.size)
    after = {o.key() for o in objects}
    cells = [o.cell for k, o in before.items() if k not in after] + [o.cell for o in objects if o.key() not in before]
    removed = next((o.name for k, o in before.items() if k not in after), None)
    return WorldEdit(row["edit_type"], row["instruction"], source, target,
                     removed if row["edit_type"] != "insertion" else None, cells[0] if cells else None)


def run_editor(backbone: Backbone, edits: list[WorldEdit], *, num_steps: int = 4, sampler: str = "renoise",
               seed: int = 0, batch_size: int = 16) -> torch.Tensor:
    """The editor's outputs (N,3,H,W) in [-1, 1] for the edits' source renders and instructions."""
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for start in range(0, len(edits), batch_size):
        chunk = edits[start:start + batch_size]
        outputs.append(edit_images(backbone, renders([e.source for e in chunk]), [e.instruction for e in chunk], num_steps=num_steps,
                                   sampler=sampler, generator=generator))
    return torch.cat(outputs)


def mean_of(values) -> float | None:
    """The mean of the values that are numbers (not None or NaN); None when there are none."""
    kept = [float(v) for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(kept)) if kept else None


def share_interval(share: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson interval of a share measured on `n` edits (success, edit made): how far a score on few edits may
    sit from the editor's true rate, sampling noise included."""
    from scipy.stats import binomtest

    interval = binomtest(round(share * n), n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def summarise(edits: list[WorldEdit], scores: list[EditScore]) -> dict[str, TypeScores]:
    """Per edit type (and "mean": the unweighted mean over types) of the verifier's scores."""
    table = {}
    for edit_type in dict.fromkeys(e.edit_type for e in edits):
        mine = [s for e, s in zip(edits, scores) if e.edit_type == edit_type]
        table[edit_type] = TypeScores(mean_of(s.success for s in mine), mean_of(s.preservation_db for s in mine),
                                      mean_of(s.realism for s in mine), mean_of(s.untouched_objects_kept for s in mine),
                                      mean_of(s.applied for s in mine), len(mine))
    rows = list(table.values())
    table["mean"] = TypeScores(*(mean_of(getattr(r, f) for r in rows)
                                 for f in ("success", "preservation_db", "realism", "untouched_objects_kept", "applied")),
                               sum(r.n for r in rows))
    return table


def score_editor(backbone: Backbone, edits: list[WorldEdit], *, num_steps: int = 4, sampler: str = "renoise",
                 seed: int = 0, grid: Path | None = None, grid_rows: int = 16) -> dict[str, dict]:
    """Edit, verify and summarise; optionally write a grid of the first `grid_rows` edits spread over the types."""
    outputs = run_editor(backbone, edits, num_steps=num_steps, sampler=sampler, seed=seed)
    scores = [score_edit(e, o) for e, o in zip(edits, outputs)]
    if grid is not None:
        save_verdict_grid(edits, outputs, scores, grid, rows=grid_rows)
    return {edit_type: asdict(s) for edit_type, s in summarise(edits, scores).items()}


def verdict_text(edit: WorldEdit, score: EditScore) -> str:
    """A grid row's text: the edit, the verdict, preservation outside the mask (none for a style edit), realism."""
    verdict = "OK" if score.success else "FAIL (edit made)" if score.applied else "FAIL"
    kept = "edits the whole image" if np.isnan(score.preservation_db) else \
        f"{score.preservation_db:.0f} dB outside the mask"
    realism = "" if score.realism else f"; not a world scene ({score.problems[0]})"
    return f"[{edit.edit_type}] {edit.instruction}\n-> {verdict}, {kept}{realism}"


def save_verdict_grid(edits: list[WorldEdit], outputs: torch.Tensor, scores: list[EditScore], path: Path,
                      rows: int = 16) -> Path:
    """A PNG: one row per edit, round-robin over the edit types present."""
    from PIL import Image

    from training.visualize import save_edit_grid

    by_type: dict[str, list[int]] = {}
    for i, e in enumerate(edits):
        by_type.setdefault(e.edit_type, []).append(i)
    order = [i for group in zip(*by_type.values()) for i in group][:rows]
    as_image = lambda t: Image.fromarray(((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255)  # noqa: E731
                                         .astype(np.uint8))
    return save_edit_grid([render(edits[i].source) for i in order], [verdict_text(edits[i], scores[i]) for i in order],
                          [as_image(outputs[i]) for i in order], path, cell=128)
