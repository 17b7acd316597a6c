"""The world as one more benchmark of the evaluation harness, judged by its verifier instead of a VLM.

`export_benchmark` writes held-out world edits in ImgEdit-Bench Basic's published layout (`singleturn.json` beside the
source photos), so `npedit eval generate --benchmark imgedit --data DIR` edits them like any benchmark copy;
`judge_results` then scores the outputs it wrote (`<results>/<key>.png`) with the classical verifier: success,
preservation outside the edit mask and realism per world edit type, every case in `scores.parquet`. The edits are
drawn again from the seed recorded in `world_benchmark.json`, so the truth never travels through the images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from schemas.errors import ConfigError
from world.evaluate import EVAL_SEED, held_out_edits, summarise
from world.scene import render
from world.score import score_edit

MANIFEST = "world_benchmark.json"
FOLDER = Path("Benchmark") / "singleturn"
# ImgEdit's type names for the world's edit types (its `adjust` covers attribute changes of an object)
IMGEDIT_TYPE = {"insertion": "add", "replace": "replace", "local_texture": "adjust", "shape_change": "adjust",
                "style": "style", "remove": "remove", "local_color_change": "adjust", "background": "background"}


def case_key(edit_type: str, index: int) -> str:
    return f"world-{edit_type}-{index:03d}"


def export_benchmark(out: Path, per_type: int, *, seed: int = EVAL_SEED) -> Path:
    """Held-out world edits as an ImgEdit-Bench Basic copy in `out`; returns the `singleturn.json` path."""
    folder = Path(out) / FOLDER
    (folder / "world").mkdir(parents=True, exist_ok=True)
    listing, counts = {}, {}
    for edit in held_out_edits(per_type, seed=seed):
        index = counts[edit.edit_type] = counts.get(edit.edit_type, -1) + 1
        key = case_key(edit.edit_type, index)
        photo = f"world/{key}.png"
        render(edit.source).save(folder / photo)
        listing[key] = {"id": photo, "prompt": edit.instruction, "edit_type": IMGEDIT_TYPE[edit.edit_type]}
    (folder / "singleturn.json").write_text(json.dumps(listing, indent=1))
    (Path(out) / MANIFEST).write_text(json.dumps({"seed": seed, "per_type": per_type}))
    return folder / "singleturn.json"


def judge_results(benchmark: Path, results: Path) -> dict:
    """Score the outputs in `results` (`<key>.png`, as `eval generate` writes them) against the world's truth;
    writes `results/world_judge/scores.parquet` and `report.md` and returns the per-type summary."""
    manifest = Path(benchmark) / MANIFEST
    if not manifest.exists():
        raise ConfigError(f"{benchmark}: no {MANIFEST}; export the world benchmark with `npedit world benchmark`")
    settings = json.loads(manifest.read_text())
    edits = held_out_edits(settings["per_type"], seed=settings["seed"])
    counts: dict[str, int] = {}
    rows, scores, scored_edits, missing = [], [], [], []
    for edit in edits:
        index = counts[edit.edit_type] = counts.get(edit.edit_type, -1) + 1
        key = case_key(edit.edit_type, index)
        path = Path(results) / f"{key}.png"
        if not path.exists():
            missing.append(key)
            continue
        output = Image.open(path).convert("RGB")
        if output.size != render(edit.source).size:
            output = output.resize(render(edit.source).size, Image.Resampling.BICUBIC)
        score = score_edit(edit, np.asarray(output))
        scores.append(score)
        scored_edits.append(edit)
        rows.append({"key": key, "edit_type": edit.edit_type, "instruction": edit.instruction,
                     "success": score.success, "preservation_db": float(score.preservation_db),
                     "realism": score.realism, "problems": "; ".join(score.problems)})
    if not rows:
        raise ConfigError(f"{results}: none of the {len(edits)} outputs (<key>.png) is there; run `npedit eval "
                          f"generate --benchmark imgedit --data {benchmark}` first")
    summary = {t: vars(s) for t, s in summarise(scored_edits, scores).items()}
    out = Path(results) / "world_judge"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "scores.parquet")
    lines = ["# The world verifier's scores", "",
             f"{len(rows)} of {len(edits)} cases scored ({len(missing)} outputs missing, counted as not scored).", "",
             "| edit type | n | success | preservation (dB) | realism |", "|---|---:|---:|---:|---:|"]
    for edit_type, s in summary.items():
        kept = "n/a" if s["preservation_db"] is None else f"{s['preservation_db']:.1f}"
        lines.append(f"| {edit_type} | {s['n']} | {s['success']:.0%} | {kept} | {s['realism']:.0%} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"summary": summary, "scored": len(rows), "missing": missing, "folder": out}
