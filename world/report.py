"""The world experiment's report: tables (mean over seeds, with the spread), a per-type plot, the paper's expected
pattern checked against what was measured (with its noise), and the models' own quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from schemas.edit_types import EDIT_TYPES
from training.customization import CUSTOMIZATION
from world.ceilings import CEILINGS
from world.evaluate import share_interval

GOAL = {"success": 0.80, "preservation_db": 30.0, "realism": 0.95}


# a `world build` stage that continues a model -> the entry recording that phase in the model's manifest, each
# model's phases in the order they run
CONTINUED = {"vae_decoder": "decoder_finetune", "vae_decoder_robust": "decoder_robust",
             "teacher_anneal": "anneal", "teacher_small_objects": "small_objects",
             "teacher_beside": "beside",
             "critic_customization": "finetune", "critic_anneal": "anneal", "critic_robust": "robust",
             "critic_outputs": "outputs_finetune", "critic_adversarial": "adversarial", "critic_smooth": "smooth"}
PHASES = tuple(dict.fromkeys(CONTINUED.values()))
# a critic's quality measured on images other than renders -> what they are, as the quality lines name them
MEASURED_ON_IMAGES = {"degraded_renders": "degraded renders", "editor_outputs": "editors' outputs",
                      "attacked_outputs": "outputs pushed against it", "noisy_renders": "renders under its noise"}


def _phase_name(key: str) -> str:
    """A manifest key's phase: `anneal_2` (the phase run again) is `anneal`."""
    head, _, tail = key.rpartition("_")
    return head if tail.isdigit() and head else key


def model_quality(models: Path) -> dict:
    """Each world model's measured quality, from its manifest, with its steps and minutes over all its phases."""
    found = {}
    for name in ("vae", "teacher", "critic", "builder"):
        path = Path(models) / name / "manifest.json"
        if path.exists():
            manifest = json.loads(path.read_text())
            recorded = [key for key in manifest if _phase_name(key) in PHASES]  # the order they ran
            phases = [manifest] + [manifest[key] for key in recorded]
            found[name] = {"quality": manifest.get("quality"), "steps": sum(p.get("steps") or 0 for p in phases),
                           "train_minutes": round(sum(p.get("train_minutes") or 0 for p in phases), 2),
                           "phases": recorded}
    return found


def quality_line(name: str, facts: dict) -> str:
    """One line per model: its steps, minutes and headline figures (the critic's per-kind table left out)."""
    quality = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in (facts.get("quality") or {}).items()
               if not isinstance(v, dict)}
    for measured in MEASURED_ON_IMAGES:
        if (facts.get("quality") or {}).get(measured):
            quality[f"{measured}_balanced_accuracy"] = round(facts["quality"][measured]["accuracy"], 3)
    continued = f" (then {' and '.join(facts['phases'])})" if facts.get("phases") else ""
    return f"{name}: {facts['steps']} steps, {facts['train_minutes']} min{continued}; " + ", ".join(
        f"{k} {v}" for k, v in quality.items())


def recipe_line(recipe: dict) -> str:
    """The values a models folder's `recipe.toml` sets over world_cpu, as one sentence."""
    settings = ", ".join(f"{table}.{key} = {value}" for table, values in recipe.items() for key, value in values.items())
    return f"The NP-Edit runs train with the models' `recipe.toml` over world_cpu: {settings}."


def critic_table(quality: dict) -> list[str]:
    """The critic's held-out accuracy per question kind as a markdown table (edit types x edit/identity, and on the
    asked change made to another object where measured), with the customization questions (scene, identity, copy)
    below when it was measured on them."""
    per_kind = quality.get("per_kind") or {}
    wrong = (quality.get("wrong_object") or {}).get("per_kind")
    percent = lambda c: "n/a" if c is None else f"{c:.0%}"  # noqa: E731
    rows = ["| edit type | edit question | identity question |" + (
                " edit, asked of another object | identity, asked of another object |" if wrong else ""),
            "|---|---:|---:|" + ("---:|---:|" if wrong else "")]
    for edit_type in EDIT_TYPES:
        cells = [per_kind.get(f"{edit_type}/{kind}") for kind in ("edit", "identity")]
        cells += [wrong.get(f"{edit_type}/{kind}") for kind in ("edit", "identity")] if wrong else []
        rows.append(f"| {edit_type} | " + " | ".join(percent(c) for c in cells) + " |")
    if any(kind.startswith(f"{CUSTOMIZATION}/") for kind in per_kind):
        cells = [per_kind.get(f"{CUSTOMIZATION}/{kind}") for kind in ("edit", "identity", "copy")]
        rows += ["", "| customization | scene question | identity question | copy question |", "|---|---:|---:|---:|",
                 f"| {CUSTOMIZATION} | " + " | ".join(percent(c) for c in cells) + " |"]
    return rows


def run_name(run: dict) -> str:
    """The run's folder name under `runs/` and its grid's name: `variant_seedN`."""
    return f"{run['variant']}_seed{run['seed']}"


def joined_commands(*commands: str) -> str:
    """The commands a results or curve file came from, in order and once each, joined by " ; " (each argument may
    itself be such a join): each rerun into the same folder adds its own, so the file names every command that wrote
    it."""
    parts = (part for command in commands for part in command.split(" ; "))
    return " ; ".join(dict.fromkeys(part for part in parts if part))


def _by_variant(results: dict) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for run in results["runs"]:
        grouped.setdefault(run["variant"], []).append(run)
    return grouped


def _stat(runs: list[dict], edit_type: str, metric: str) -> tuple[float | None, float | None]:
    values = [r["scores"][edit_type].get(metric) for r in runs if edit_type in r["scores"]
              and r["scores"][edit_type].get(metric) is not None]  # runs scored before a metric existed lack it
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else None


def _cell(mean: float | None, spread: float | None, percent: bool) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:.0%}" if percent else f"{mean:.1f}"
    return text + ("" if spread is None else (f" ± {spread:.0%}" if percent else f" ± {spread:.1f}"))


# the paper's claims: (claim, variant, reference, edit type, metric, how the variant should compare)
PATTERN = (
    ("DMD only fails at removal", "dmd_only", "np_edit", "remove", "applied", "<"),
    ("VLM only loses realism", "vlm_only", "np_edit", "mean", "realism", "<"),
    ("without the identity question, preservation drops", "no_identity", "np_edit", "mean", "preservation_db", "<"),
    ("NP-Edit is close to the supervised editor (edit made)", "np_edit", "supervised", "mean", "applied", "~"),
    ("NP-Edit is close to the supervised editor (success)", "np_edit", "supervised", "mean", "success", "~"),
)
CLOSE = 0.10  # "close": rates within 10 points
DB_NOISE = 1.0  # preservation differences under 1 dB are read as noise


def _pooled(runs: list[dict], edit_type: str, metric: str) -> tuple[float | None, int]:
    """The metric's mean over seeds and the number of cases behind it (all seeds together)."""
    scored = [r["scores"][edit_type] for r in runs if r["scores"].get(edit_type, {}).get(metric) is not None]
    if not scored:
        return None, 0
    return float(np.mean([s[metric] for s in scored])), sum(s.get("n") or 0 for s in scored)


def _noise(metric: str, a: tuple[float, int], b: tuple[float, int]) -> float:
    """Two standard errors of the difference a - b: pooled-proportion for rates, `DB_NOISE` for decibels."""
    if metric == "preservation_db":
        return DB_NOISE
    (pa, na), (pb, nb) = a, b
    if not na or not nb:
        return float("inf")
    pooled = (pa * na + pb * nb) / (na + nb)
    return 2 * float(np.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb)))


def _verdict(relation: str, diff: float, noise: float) -> str:
    if relation == "~":
        return "seen" if abs(diff) <= CLOSE else ("within noise" if abs(diff) <= noise else "not seen")
    if -diff > noise:
        return "seen"
    return "the opposite" if diff > noise else "within noise"


def expected_pattern(grouped: dict[str, list[dict]]) -> list[str]:
    """The paper's pattern, each claim with what was measured, two standard errors of the difference (from the number
    of cases), and a verdict: seen, within noise, not seen / the opposite (only for the variants that ran)."""
    lines = []
    for claim, variant, reference, edit_type, metric, relation in PATTERN:
        if variant not in grouped or reference not in grouped:
            continue
        a, b = _pooled(grouped[variant], edit_type, metric), _pooled(grouped[reference], edit_type, metric)
        if a[0] is None or b[0] is None:
            continue
        noise = _noise(metric, a, b)
        show = (lambda v: f"{v:.1f} dB") if metric == "preservation_db" else (lambda v: f"{v:.0%}")
        lines.append(f"- {claim}: {variant} {show(a[0])} vs {reference} {show(b[0])} ({edit_type} {metric}, "
                     f"n {a[1]} and {b[1]}; noise ±{show(noise)}): **{_verdict(relation, a[0] - b[0], noise)}**")
    return lines


def plot_per_type(grouped: dict[str, list[dict]], path: Path) -> Path:
    """Bars of success (top) and edit made (bottom) per edit type, one bar per variant (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = [t for t in EDIT_TYPES if any(t in r["scores"] for runs in grouped.values() for r in runs)]
    width = 0.8 / max(1, len(grouped))
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, metric, label in zip(axes, ("success", "applied"), ("verifier success", "edit made")):
        for i, (variant, runs) in enumerate(grouped.items()):
            means = [_stat(runs, t, metric)[0] or 0.0 for t in types]
            ax.bar(np.arange(len(types)) + i * width, means, width, label=variant)
        ax.set_ylabel(label)
        ax.set_ylim(0, 1)
    axes[1].set_xticks(np.arange(len(types)) + 0.4 - width / 2, [t.replace("_", "\n") for t in types], fontsize=8)
    axes[0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def customization_table(grouped: dict[str, list[dict]]) -> list[str]:
    """The customization scores of the runs that have them (object-centric references put into new scenes)."""
    rows = {variant: [r["customization"] for r in runs if r.get("customization")] for variant, runs in grouped.items()}
    rows = {variant: scores for variant, scores in rows.items() if scores}
    if not rows:
        return []
    names = ("success", "identity", "scene", "copy", "realism")
    lines = ["", "Customization (the reference's object put into the scene a caption names; copy: the output is the "
             "reference unchanged):", "", "| variant | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for variant, scores in rows.items():
        cells = [_cell(float(np.mean([s[n] for s in scores])),
                       float(np.std([s[n] for s in scores])) if len(scores) > 1 else None, True) for n in names]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def per_type_table(grouped: dict[str, list[dict]], types: list[str], metric: str, title: str) -> list[str]:
    """A markdown table of one metric (a share) per variant and edit type, mean over seeds with the spread."""
    lines = ["", title, "", "| variant | " + " | ".join(types) + " |", "|---|" + "---:|" * len(types)]
    for variant, runs in grouped.items():
        lines.append(f"| {variant} | " + " | ".join(_cell(*_stat(runs, t, metric), True) for t in types) + " |")
    return lines


def seen_table(grouped: dict[str, list[dict]]) -> list[str]:
    """Each variant's mean success and edit made on edits of its own training corpus beside the held-out ones: a
    gap says the editor learned its corpus rather than the edits."""
    rows = {v: [r for r in runs if r.get("seen_scores")] for v, runs in grouped.items()}
    rows = {v: runs for v, runs in rows.items() if runs}
    if not rows:
        return []
    mean = lambda runs, key, metric: float(np.mean([r[key]["mean"][metric] for r in runs]))  # noqa: E731
    lines = ["", "Edits from the training corpus (the sources and instructions the editor trained on) beside the "
             "held-out ones:", "", "| variant | corpus edits | success: corpus | success: held out | "
             "edit made: corpus | edit made: held out |", "|---|---:|---:|---:|---:|---:|"]
    for variant, runs in rows.items():
        n = runs[0]["seen_scores"]["mean"]["n"]
        lines.append(f"| {variant} | {n} | {mean(runs, 'seen_scores', 'success'):.0%} | "
                     f"{mean(runs, 'scores', 'success'):.0%} | {mean(runs, 'seen_scores', 'applied'):.0%} | "
                     f"{mean(runs, 'scores', 'applied'):.0%} |")
    return lines


def ceiling_table(ceilings: dict[str, dict], types: list[str]) -> list[str]:
    """The ceilings of `world.ceilings` on the same held-out edits, one row each."""
    if not ceilings:
        return []
    lines = ["", "Ceilings on the same held-out edits, scored like an editor's outputs: no editor in this latent space "
             "beats the first; the second is what DMD pulls an editor toward:", "",
             "| ceiling | success | edit made | realism | " + " | ".join(types) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(types)]
    for name, scores in ceilings.items():
        mean = scores["mean"]
        lines.append(f"| {CEILINGS.get(name, name)} | {mean['success']:.0%} | {mean['applied']:.0%} | "
                     f"{mean['realism']:.0%} | " + " | ".join(f"{scores[t]['success']:.0%}" if t in scores else "n/a"
                                                          for t in types) + " |")
    return lines + ["", "(the last columns: success per edit type)"]


def _noise_lines(results: dict) -> list[str]:
    """How far a share measured on the fewest held-out edits a run's edit type had may sit from the editor's rate."""
    counts = [scores["n"] for run in results["runs"] for edit_type, scores in run["scores"].items()
              if edit_type != "mean"]
    if not counts:
        return []
    n = min(counts)
    low, high = share_interval(n // 2 / n, n)  # the widest interval: half the edits successful
    return ["", f"Each run scores {n} held-out edits per type or more; a share measured on {n} edits is known to "
                f"±{(high - low) * 50:.0f} points at most (the 95 % Wilson interval, sampling noise included)."]


def write_report(results: dict, out: Path) -> Path:
    """`out/report.md` and `out/success_per_type.png` from `results` (what `results.json` holds)."""
    grouped = _by_variant(results)
    lines = ["# NP-Edit in the proof world", "",
             f"Regenerate: `{results.get('command') or 'npedit world experiment'}`", "",
             "Scores are the classical verifier's on held-out world edits: success (what the instruction names now "
             "holds and the output parses as a world scene), edit made (what the instruction names holds, realism "
             "aside), preservation (PSNR outside the edit mask; n/a for style), realism (the output parses as a world "
             f"scene). Goal: success >= {GOAL['success']:.0%}, preservation >= {GOAL['preservation_db']:.0f} dB, "
             f"realism >= {GOAL['realism']:.0%}.", *_noise_lines(results), "",
             "| variant | seeds | generator steps | train min | success | edit made | preservation (dB) | realism |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, runs in grouped.items():
        lines.append(f"| {variant} | {len(runs)} | {runs[0]['steps']} | {np.mean([r['train_minutes'] for r in runs]):.1f} | "
                     f"{_cell(*_stat(runs, 'mean', 'success'), True)} | "
                     f"{_cell(*_stat(runs, 'mean', 'applied'), True)} | "
                     f"{_cell(*_stat(runs, 'mean', 'preservation_db'), False)} | "
                     f"{_cell(*_stat(runs, 'mean', 'realism'), True)} |")
    types = [t for t in EDIT_TYPES if any(t in r["scores"] for r in results["runs"])]
    lines += seen_table(grouped)
    lines += ceiling_table(results.get("ceilings") or {}, types)
    lines += per_type_table(grouped, types, "success", "Success per edit type:")
    lines += per_type_table(grouped, types, "applied", "Edit made per edit type (success without the realism condition):")
    lines += customization_table(grouped)
    pattern = expected_pattern(grouped)
    if pattern:
        lines += ["", "The paper's pattern, as measured here:", "", *pattern]
    if results.get("models"):
        lines += ["", "The world models these runs start from (their manifests):", ""]
        lines += [f"- {quality_line(name, facts)}" for name, facts in results["models"].items()]
        if "critic" in results["models"]:
            lines += ["", "The critic's held-out accuracy per question kind:", "",
                      *critic_table(results["models"]["critic"]["quality"] or {})]
    if results.get("models_recipe"):
        lines += ["", recipe_line(results["models_recipe"])]
    joined = [f"{r['variant']} seed {r['seed']} ({' / '.join('+'.join(t) for t in r['joined_types'])})"
              for r in results["runs"] if r.get("joined_types")]
    if joined:
        lines += ["", "Joined from parts that each trained their own editor on their own edit types, one run per "
                      f"part: {'; '.join(joined)}. Such a run's mean is over those editors, its train minutes "
                      "their sum; its grids and loss curves are named by their edit types."]
    weights = sorted({r["edit_weight"] for r in grouped.get("supervised", []) if r.get("edit_weight", 1.0) != 1.0})
    if weights:
        lines += ["", "The supervised editor's loss weighs the latent pixels an edit may change "
                      f"{' / '.join(f'{w:g}' for w in weights)} times the rest (`--supervised-edit-weight`)."]
    lines += ["", "![success and edit made per edit type](success_per_type.png)", "",
              "Grids (input | instruction + verdict | output) are in `grids/`, loss curves in `runs/*/`."]
    plot_per_type(grouped, out / "success_per_type.png")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
