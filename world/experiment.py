"""`npedit world experiment`: NP-Edit on the world beside its ablations and a supervised editor, all from the same
teacher and snapshot at equal generator steps, scored per edit type by the classical verifier.

The first NP-Edit run gets the time budget; the steps it reaches are every other variant's budget. Results are
written after every run (a rerun skips the runs already in `results.json`), then `report.md`, a verdict grid per run
and loss curves. A rerun asking for more `--steps` continues the shorter runs from their last checkpoints and scores
them again (NP-Edit runs under 600 steps change their warmup and one-step phases when their budget grows).
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from schemas.edit_types import EDIT_TYPES
from schemas.errors import Refused
from training.backbones import ZImageBackbone
from training.checkpoint import latest_checkpoint
from training.config import load_config
from training.monitor import plot_loss_curves
from training.run import build_trainer, resolved_for
from world import RECIPE_FILE
from world.ceilings import ceilings
from world.customization import held_out_customizations, score_customizer
from world.evaluate import held_out_edits, score_editor, training_edits
from world.report import joined_commands, model_quality, run_name, write_report
from world.supervised import train_supervised

VARIANTS: dict[str, dict | str] = {
    "teacher": "no training: the teacher-initialised editor",
    "np_edit": {},
    "dmd_only": {"loss.lambda_vlm": 0.0},
    "vlm_only": {"loss.lambda_dmd": 0.0},
    "no_identity": {"loss.identity_question": False},
    "supervised": "flow matching on the world's rendered pairs",
}


@dataclass(frozen=True)
class Experiment:
    out: Path
    models: Path = Path("world_models")  # teacher/ and critic/
    corpus: Path = Path("world_corpus")  # the snapshot's lake
    minutes: float = 30.0  # the first NP-Edit run's budget; it sets every run's steps
    steps: int | None = None  # a fixed step budget instead of minutes
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: tuple[int, ...] = (0, 1)
    seeds_for: tuple[str, ...] = ("np_edit", "supervised")  # the others run the first seed only
    per_type: int = 25  # held-out edits per type
    edit_types: tuple[str, ...] = EDIT_TYPES  # the types scored and trained (NP-Edit and the supervised editor)
    sampling_steps: int = 4
    overrides: dict = field(default_factory=dict)  # extra config overrides for every NP-Edit run
    customization: int = 0  # held-out customization cases scored per run beside the edits (0: none)
    ceilings: bool = True  # score the reference points of `world.ceilings` once per experiment
    supervised_edit_weight: float = 1.0  # the supervised loss's weight on the pixels an edit may change
    supervised_identity_share: float = 0.0  # the supervised editor's pairs returned unchanged (train_supervised)
    supervised_whom_pairs: bool = False  # its batches as pairs: each change also asked of another object of the scene

    @property
    def models_recipe(self) -> Path | None:
        """The models' own `recipe.toml` (world_cpu values their teacher was tuned for), applied under `overrides`."""
        path = self.models / RECIPE_FILE
        return path if path.exists() else None

    def runs(self) -> list[tuple[str, int]]:
        order = ["np_edit"] + [v for v in self.variants if v != "np_edit"]  # np_edit first: it sets the steps
        return [(v, s) for v in order if v in self.variants
                for s in (self.seeds if v in self.seeds_for else self.seeds[:1])]


def _config(experiment: Experiment, variant: str, seed: int, out_dir: Path, steps: int | None):
    """The world_cpu recipe with the world's paths; a short step budget shortens the warmup and one-step phases."""
    overrides = {"model.generator": str(experiment.models / "teacher"), "model.critic": str(experiment.models / "critic"),
                 "data.lake_dir": str(experiment.corpus), "log.out_dir": str(out_dir), "seed": seed,
                 "schedule.total_steps": steps or 100_000}
    recipe = load_config("world_cpu", experiment.models_recipe).schedule
    if steps is not None:
        overrides["schedule.warmup_steps"] = max(1, min(recipe.warmup_steps, steps // 12))
        overrides["schedule.single_step_steps"] = min(recipe.single_step_steps, steps // 3)
    if set(experiment.edit_types) != set(EDIT_TYPES):
        overrides["data.edit_type_weights"] = {t: 1 / len(experiment.edit_types) for t in experiment.edit_types}
    return resolved_for(load_config("world_cpu", experiment.models_recipe,
                                    overrides={**overrides, **experiment.overrides, **VARIANTS[variant]}), 1)


def _train_np_edit(experiment: Experiment, variant: str, seed: int, out_dir: Path, steps: int | None):
    """Train one NP-Edit variant for `steps` (or, when None, for the time budget); the editor and its facts."""
    config = _config(experiment, variant, seed, out_dir, steps)
    trainer = build_trainer(config, out_dir)
    trainer.resume()
    start = time.monotonic()
    trainer.train(progress=False, seconds=None if steps else experiment.minutes * 60)
    return trainer.generator, {"steps": trainer.step, "train_minutes": round((time.monotonic() - start) / 60, 2)}


def run_one(experiment: Experiment, variant: str, seed: int, steps: int | None) -> dict:
    """Train (unless the variant is the untrained teacher) and score one run."""
    out_dir = experiment.out / "runs" / f"{variant}_seed{seed}"
    if variant == "teacher":
        editor, facts = ZImageBackbone.from_pretrained(experiment.models / "teacher"), {"steps": 0, "train_minutes": 0}
    elif variant == "supervised":
        start = time.monotonic()
        log_config = load_config("world_cpu", experiment.models_recipe, overrides=experiment.overrides).log
        editor, history = train_supervised(experiment.models / "teacher", out_dir, steps=steps, seed=seed,
                                           edit_types=experiment.edit_types, progress=False,
                                           checkpoint_every=log_config.checkpoint_every,
                                           edit_weight=experiment.supervised_edit_weight,
                                           identity_share=experiment.supervised_identity_share,
                                           group=2 if experiment.supervised_whom_pairs else 1,
                                           whom_pairs=experiment.supervised_whom_pairs)
        plot_loss_curves(history, out_dir / "loss_curves.png")
        facts = {"steps": steps, "train_minutes": round((time.monotonic() - start) / 60, 2),
                 "edit_weight": experiment.supervised_edit_weight,
                 **({"identity_share": experiment.supervised_identity_share}
                    if experiment.supervised_identity_share else {}),
                 **({"whom_pairs": True} if experiment.supervised_whom_pairs else {})}
    else:
        editor, facts = _train_np_edit(experiment, variant, seed, out_dir, steps)
    edits = held_out_edits(experiment.per_type, edit_types=experiment.edit_types)
    scores = score_editor(editor, edits, num_steps=experiment.sampling_steps, seed=seed,
                          grid=experiment.out / "grids" / f"{variant}_seed{seed}.png")
    seen = training_edits(experiment.corpus, experiment.per_type, edit_types=experiment.edit_types)
    run = {"variant": variant, "seed": seed, **facts, "scores": scores,
           "seen_scores": score_editor(editor, seen, num_steps=experiment.sampling_steps, seed=seed) if seen else {}}
    if experiment.customization:
        run["customization"] = score_customizer(
            editor, held_out_customizations(experiment.customization), num_steps=experiment.sampling_steps, seed=seed,
            grid=experiment.out / "grids" / f"{variant}_seed{seed}_customization.png")
    return run


def run_experiment(experiment: Experiment, *, command: str = "", log=print) -> dict:
    """Every run of the experiment (resuming from `results.json`), then the report."""
    experiment.out.mkdir(parents=True, exist_ok=True)
    path = experiment.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": []}
    results["command"] = joined_commands(results.get("command", ""), command)
    results.setdefault("models", model_quality(experiment.models))
    if experiment.models_recipe:
        results.setdefault("models_recipe", tomllib.loads(experiment.models_recipe.read_text()))
    steps = experiment.steps or next((r["steps"] for r in results["runs"] if r["variant"] == "np_edit"), None)
    if steps is None and "np_edit" not in experiment.variants:
        raise Refused("without the np_edit run, give the step budget (--steps)")
    if experiment.ceilings and "ceilings" not in results:
        log("ceilings: the true targets through the VAE, and the teacher drawing the targets' captions")
        results["ceilings"] = ceilings(ZImageBackbone.from_pretrained(experiment.models / "teacher"),
                                       held_out_edits(experiment.per_type, edit_types=experiment.edit_types))
        path.write_text(json.dumps(results, indent=2))
    shorter = _shorter_runs(experiment, results, steps)
    done = {(r["variant"], r["seed"]) for r in results["runs"]}
    for variant, seed in experiment.runs():
        if (variant, seed) in done and (variant, seed) not in shorter:
            continue
        earlier = shorter.get((variant, seed))
        log(f"{variant} seed {seed}: " + ("untrained" if variant == "teacher" else f"{steps} steps" if steps
                                          else f"{experiment.minutes} min")
            + (f", continued from the run scored at step {earlier['steps']}" if earlier else ""))
        run = run_one(experiment, variant, seed, steps)
        if earlier:
            run["continued_from"] = earlier["steps"]
            run["train_minutes"] = round(run["train_minutes"] + earlier["train_minutes"], 2)
        steps = steps or run["steps"]  # the first NP-Edit run, on the time budget, sets every run's steps
        mean = run["scores"]["mean"]
        log(f"{variant} seed {seed}: {run['steps']} steps, success {mean['success']:.1%}, "
            f"applied {mean['applied']:.1%}, realism {mean['realism']:.1%}")
        results["runs"] = [run if (r["variant"], r["seed"]) == (variant, seed) else r for r in results["runs"]]
        if not earlier:
            results["runs"].append(run)
        path.write_text(json.dumps(results, indent=2))
    write_report(results, experiment.out)
    return results


def _shorter_runs(experiment: Experiment, results: dict, steps: int | None) -> dict[tuple[str, int], dict]:
    """The trained runs in `results` that stopped short of `steps` and kept a checkpoint to continue from, by
    (variant, seed); one without a checkpoint trains again from step 0. A run beyond `steps` is refused."""
    shorter = {}
    for run in list(results["runs"]):
        if run["variant"] == "teacher" or steps is None or run["steps"] == steps:
            continue
        name = run_name(run)
        if run["steps"] > steps:
            raise Refused(f"{name} in {experiment.out} ran {run['steps']} steps, more than the {steps} asked: "
                          f"ask for --steps {run['steps']} or another --out")
        if latest_checkpoint(experiment.out / "runs" / name) is not None:
            shorter[(run["variant"], run["seed"])] = run
        else:
            results["runs"].remove(run)
    return shorter
