"""`npedit demo` (default): NP-Edit on the proof world, from the committed world models, with every number computed by
the world's classical verifier.

Steps: show the committed models' measured quality -> build a world corpus with the real builder (loopback images,
img2dataset, the VLM stages answered by the world oracle, a DuckLake snapshot) -> score the teacher-initialised editor
on held-out edits -> train NP-Edit from the snapshot (VLM feedback + DMD, no edit pairs) -> score the trained editor
-> print both per edit type and write the verdict grids.

By default it trains and scores the background edit: of the 8 types, the one a few CPU minutes teach from the committed
models (`docs/world_experiment/findings.md` measures each). `--edit-types` picks others, all 8 included.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from schemas.edit_types import EDIT_TYPES


def _table(results: dict) -> Table:
    runs = {run["variant"]: run["scores"] for run in results["runs"]}
    table = Table(title="verifier scores on held-out world edits (before -> after NP-Edit training)")
    for column in ("edit type", "edit made", "success", "preservation dB", "realism"):
        table.add_column(column)

    def cell(scores: dict, edit_type: str, metric: str, percent: bool) -> str:
        value = scores[edit_type][metric]
        return "n/a" if value is None else f"{value:.0%}" if percent else f"{value:.1f}"

    for edit_type in [*EDIT_TYPES, "mean"]:
        if edit_type not in runs["teacher"]:
            continue
        table.add_row(edit_type, *(f"{cell(runs['teacher'], edit_type, m, p)} -> {cell(runs['np_edit'], edit_type, m, p)}"
                                   for m, p in (("applied", True), ("success", True), ("preservation_db", False),
                                               ("realism", True))))
    return table


def _ceiling_line(results: dict) -> str:
    """The experiment's ceilings (`world.ceilings`) in one line, to read the trained editor's scores against."""
    from world.ceilings import CEILINGS

    found = results.get("ceilings") or {}
    return "ceilings on the same edits: " + "; ".join(
        f"{CEILINGS[name]}: success {scores['mean']['success']:.0%}, realism {scores['mean']['realism']:.0%}"
        for name, scores in found.items())


def _seen_line(results: dict) -> str:
    """Success on edits of the training corpus beside the held-out ones, before -> after: a gap is memorisation."""
    runs = {run["variant"]: run for run in results["runs"]}
    seen = lambda variant: runs[variant].get("seen_scores", {}).get("mean")  # noqa: E731
    if not (seen("teacher") and seen("np_edit")):
        return "no corpus edits to score (not a world corpus)"
    return (f"on {seen('np_edit')['n']} edits from its own training corpus: success {seen('teacher')['success']:.0%} "
            f"-> {seen('np_edit')['success']:.0%}, edit made {seen('teacher')['applied']:.0%} -> "
            f"{seen('np_edit')['applied']:.0%} (held out: success {runs['np_edit']['scores']['mean']['success']:.0%})")


DEMO_EDIT_TYPES = ("background",)


def run_world_demo(out_dir: Path, *, models: Path | None = None, images: int = 1000, steps: int = 150,
                   per_type: int = 8, edit_types: tuple[str, ...] = DEMO_EDIT_TYPES) -> Path:
    """Committed world models -> world corpus through the builder -> NP-Edit training -> verified edits; returns the
    trained editor's verdict grid."""
    from world.corpus import build_world_corpus, corpus_summary
    from world.experiment import Experiment, run_experiment
    from world.report import model_quality, quality_line
    from world import PRETRAINED

    models = models or PRETRAINED
    console = Console()
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    console.rule(f"1. world models (committed, {models})")
    for name, facts in model_quality(models).items():
        console.print(quality_line(name, facts))

    console.rule(f"2. world corpus: {images} scenes on loopback -> img2dataset -> VLM stages (world oracle) -> snapshot")
    built = build_world_corpus(out_dir / "world_corpus", images, vlm="oracle", on_event=lambda message: None)
    summary = corpus_summary(built.store, built.snapshot_id)
    console.print(f"snapshot {built.snapshot_id} in {built.seconds:.0f} s; rows {summary['rows']}; "
                  f"validity {summary['validity_rate']:.0%}; edit types max/min {summary['max_min_ratio']}")

    console.rule(f"3. score the untrained editor, train NP-Edit {steps} steps on {', '.join(edit_types)}, score it "
                 f"({per_type} edits per type)")
    experiment = Experiment(out=out_dir / "experiment", models=models, corpus=out_dir / "world_corpus", steps=steps,
                            variants=("teacher", "np_edit"), seeds=(0,), per_type=per_type,
                            edit_types=tuple(edit_types))
    results = run_experiment(experiment, command=f"npedit demo --out {out_dir}", log=console.print)
    console.print(_table(results))
    console.print(_seen_line(results))
    if results.get("ceilings"):
        console.print(_ceiling_line(results))
    grid = experiment.out / "grids" / "np_edit_seed0.png"
    console.print(f"verdict grids: {experiment.out / 'grids'}; report: {experiment.out / 'report.md'}")
    return grid
