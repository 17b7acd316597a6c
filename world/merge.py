"""`npedit world report`: one experiment's report from runs split over several `--out` folders.

A part is a folder holding `results.json` (an experiment's `--out`, or a report made from one). `DIR:RUN,RUN` keeps
only the named runs of that part (`np_edit_seed0`), `DIR:none` keeps none of them and only its ceilings. Runs of one
variant and seed in several parts are joined when the parts score disjoint edit types: one editor per edit type,
trained in its own experiment, and a mean over their types.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from world.evaluate import mean_of
from world.report import joined_commands, run_name, write_report

RUN_NAMES = re.compile(r"none|[a-z_]+_seed\d+(,[a-z_]+_seed\d+)*")


@dataclass(frozen=True)
class Part:
    """One folder's results and which of its runs the report keeps (None: all of them)."""

    folder: Path
    keep: frozenset[str] | None = None

    @classmethod
    def parse(cls, text: str) -> Part:
        """`DIR`, `DIR:RUN,RUN` or `DIR:none`; a colon not followed by run names belongs to the path."""
        folder, colon, names = str(text).rpartition(":")
        if not colon or not RUN_NAMES.fullmatch(names):
            return cls(Path(text))
        return cls(Path(folder), frozenset() if names == "none" else frozenset(names.split(",")))


def edit_types_of(run: dict) -> list[str]:
    """The edit types a run was scored on."""
    return [t for t in run["scores"] if t != "mean"]


def with_mean(scores: dict[str, dict]) -> dict[str, dict]:
    """Per-type scores with "mean" recomputed as the unweighted mean over the types (n: their sum)."""
    rows = [s for t, s in scores.items() if t != "mean"]
    metrics = dict.fromkeys(m for row in rows for m in row if m != "n")
    mean = {m: mean_of(row.get(m) for row in rows) for m in metrics}
    per_type = {t: s for t, s in scores.items() if t != "mean"}
    return {**per_type, "mean": {**mean, "n": sum(r.get("n") or 0 for r in rows)}}


def join_runs(runs: list[dict]) -> dict:
    """One run from runs of one variant and seed scored on disjoint edit types (one editor per type)."""
    types = [t for run in runs for t in edit_types_of(run)]
    if len(set(types)) != len(types):
        twice = sorted({t for t in types if types.count(t) > 1})
        raise ValueError(f"a run appears in more than one part: {run_name(runs[0])} scores {twice} twice "
                         "(keep one: DIR:RUN,RUN or DIR:none)")
    joined = {**runs[0], "train_minutes": round(sum(r["train_minutes"] for r in runs), 2),
              "scores": with_mean({t: s for r in runs for t, s in r["scores"].items() if t != "mean"}),
              "joined_types": [edit_types_of(r) for r in runs]}
    if all("seen_scores" in r for r in runs):
        joined["seen_scores"] = with_mean({t: s for r in runs for t, s in r["seen_scores"].items() if t != "mean"})
    else:
        joined.pop("seen_scores", None)
    return joined


def join_ceilings(parts: list[dict]) -> dict[str, dict]:
    """Each ceiling's per-type scores over all parts (the first part's where two score one type), mean recomputed."""
    joined: dict[str, dict] = {}
    for bounds in parts:
        for name, scores in bounds.items():
            mine = joined.setdefault(name, {})
            mine.update({t: s for t, s in scores.items() if t != "mean" and t not in mine})
    return {name: with_mean(scores) for name, scores in joined.items()}


def _copy_pictures(folder: Path, run: dict, out: Path, suffix: str) -> None:
    """The run's grids (`NAME.png`, `NAME_customization.png`) and loss curves, their names given `suffix`."""
    name = run_name(run)
    for grid in [*(folder / "grids").glob(f"{name}.png"), *(folder / "grids").glob(f"{name}_*.png")]:
        (out / "grids").mkdir(parents=True, exist_ok=True)
        shutil.copy(grid, out / "grids" / f"{name}{suffix}{grid.name[len(name):]}")
    curves = folder / "runs" / name / "loss_curves.png"
    if curves.exists():
        (out / "runs" / f"{name}{suffix}").mkdir(parents=True, exist_ok=True)
        shutil.copy(curves, out / "runs" / f"{name}{suffix}" / curves.name)


def _read_part(part: Part) -> tuple[dict, list[dict]]:
    path = part.folder / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `npedit world experiment --out {part.folder}` first")
    results = json.loads(path.read_text())
    runs = results["runs"]
    if part.keep is not None:
        missing = sorted(part.keep - {run_name(r) for r in runs})
        if missing:
            raise ValueError(f"{part.folder} has no run {', '.join(missing)}: it has "
                             f"{', '.join(run_name(r) for r in runs) or 'none'}")
        runs = [r for r in runs if run_name(r) in part.keep]
    return results, runs


def _check_comparable(runs: list[dict], recipes: list[dict]) -> None:
    budgets = {r["steps"] for r in runs if r["variant"] != "teacher"}
    if len(budgets) > 1:
        raise ValueError(f"the parts trained for different step budgets {sorted(budgets)}: not comparable")
    weights = {r.get("edit_weight", 1.0) for r in runs if r["variant"] == "supervised"}
    if len(weights) > 1:
        raise ValueError(f"the parts' supervised editors weigh the edit differently {sorted(weights)}: not comparable")
    if any(other != recipes[0] for other in recipes):
        raise ValueError("the parts trained with different models' recipe.toml values: not comparable")
    covered: dict[str, set[frozenset[str]]] = {}
    for run in runs:
        covered.setdefault(run["variant"], set()).add(frozenset(edit_types_of(run)))
    uneven = {v: sorted(sorted(t) for t in types) for v, types in covered.items() if len(types) > 1}
    if uneven:
        raise ValueError(f"runs of one variant cover different edit types {uneven}: their means are not comparable")


def merge_results(parts: list[str | Path], out: Path, *, command: str = "") -> dict:
    """Merge the parts' results into `out/results.json`, copy their grids and loss curves, write `out/report.md`."""
    read = [(part, *_read_part(part)) for part in map(Part.parse, parts)]
    by_run: dict[tuple[str, int], list[tuple[Path, dict]]] = {}
    for part, _, runs in read:
        for run in runs:
            by_run.setdefault((run["variant"], run["seed"]), []).append((part.folder, run))
    merged_runs = [join_runs([run for _, run in pieces]) if len(pieces) > 1 else pieces[0][1]
                   for pieces in by_run.values()]
    recipes = [results.get("models_recipe", {}) for _, results, _ in read]
    _check_comparable(merged_runs, recipes)
    for pieces in by_run.values():
        for folder, run in pieces:
            _copy_pictures(folder, run, out, f"_{'+'.join(edit_types_of(run))}" if len(pieces) > 1 else "")
    bounds = join_ceilings([results.get("ceilings") or {} for _, results, _ in read])
    commands = [results.get("command", "") for _, results, _ in read]
    models = next((results["models"] for _, results, _ in read if results.get("models")), {})
    out.mkdir(parents=True, exist_ok=True)
    merged = {"command": joined_commands(*commands, command), "parts": commands, "models": models,
              "runs": merged_runs, **({"ceilings": bounds} if bounds else {}),
              **({"models_recipe": recipes[0]} if recipes[0] else {})}
    (out / "results.json").write_text(json.dumps(merged, indent=2))
    write_report(merged, out)
    return merged
