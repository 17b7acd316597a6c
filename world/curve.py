"""A run's learning curve in verifier terms: each saved generator checkpoint scored on the same held-out world edits,
written as `curve.json` and `curve.png` (mean success, edit made and realism, preservation, and success per edit type,
against the generator step)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from world.report import joined_commands

STEP = re.compile(r"step-(\d+)")


def checkpoint_step(editor: Path) -> int:
    """The generator step an editor checkpoint's path names (`.../step-0000500/generator`); 0 where it names none (the
    teacher-initialised editor before training)."""
    found = STEP.findall(str(editor))
    return int(found[-1]) if found else 0


def load_curve(out: Path, *, name: str = "curve", command: str = "npedit world score") -> dict:
    """`out/<name>.json` as written by `write_curve` (or another curve `command` writes with --curve); a missing or
    corrupt one is a ValueError."""
    path = out / f"{name}.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist: write it with `{command} ... --curve {out}`")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict) or not {"settings", "points"} <= set(saved):
        raise ValueError(f"{path} is not a curve written by `{command} --curve`")
    return saved


def read_curve(out: Path, settings: dict, *, name: str = "curve",
               command: str = "npedit world score") -> dict[str, dict]:
    """The editors already scored in `out/<name>.json` (path -> per-type scores), so a rerun adds only new
    checkpoints; scores made with other settings (edits per type, types, sampling steps, seed) are an error, not a
    mixed curve."""
    path = out / f"{name}.json"
    if not path.exists():
        return {}
    saved = load_curve(out, name=name, command=command)
    if saved.get("settings") != settings:
        raise ValueError(f"{path} was scored with {saved.get('settings')}, not {settings}: give another --curve folder")
    return {p["editor"]: p["scores"] for p in saved["points"]}


def curve_points(scored: list[tuple[Path, dict[str, dict]]]) -> list[dict]:
    """(editor path, its per-type scores) pairs as curve points ordered by step; a step named twice is an error (the
    checkpoints of two runs in one curve)."""
    points = sorted(({"step": checkpoint_step(editor), "editor": str(editor), "scores": scores}
                     for editor, scores in scored), key=lambda p: p["step"])
    steps = [p["step"] for p in points]
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    if repeated:
        raise ValueError(f"two editors at step {repeated[0]}: a curve holds the checkpoints of one run")
    return points


def plot_curve(points: list[dict], path: Path) -> Path:
    """Three panels against the generator step: the mean success, edit made and realism; the mean preservation
    outside the edit mask; success per edit type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    fig, (means, kept, per_type) = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("success", "success"), ("applied", "edit made"), ("realism", "realism")):
        means.plot(steps, [100 * p["scores"]["mean"][key] for p in points], marker="o", label=label)
    means.set(title="mean over edit types", xlabel="generator step", ylabel="% of held-out edits", ylim=(0, 100))
    means.legend(fontsize=8)
    kept.plot(steps, [p["scores"]["mean"]["preservation_db"] for p in points], marker="o", color="tab:purple")
    kept.set(title="preservation outside the edit mask", xlabel="generator step", ylabel="PSNR (dB)")
    types = [t for t in points[0]["scores"] if t != "mean"]
    for edit_type in types:
        per_type.plot(steps, [100 * p["scores"][edit_type]["success"] for p in points], marker=".", label=edit_type)
    per_type.set(title="success per edit type", xlabel="generator step", ylabel="%", ylim=(0, 100))
    per_type.legend(fontsize=7, ncol=2)
    return _saved(fig, path)


def write_probed_curve(measured: dict[str, dict], out: Path, *, name: str, settings: dict, command: str,
                       plot) -> Path:
    """`out/<name>.json` and `plot(points, out/<name>.png)` from (editor path -> figures), ordered by the step each
    path names; two editors at one step is a ValueError."""
    points = curve_points([(Path(editor), figures) for editor, figures in measured.items()])
    return _write_points(points, out, name=name, settings=settings, command=command, plot=plot)[1]


def write_curve(points: list[dict], out: Path, *, settings: dict, command: str = "") -> tuple[Path, Path]:
    """`out/curve.json` (the command, the scoring settings and every point) and `out/curve.png`."""
    return _write_points(points, out, name="curve", settings=settings, command=command, plot=plot_curve)


def _write_points(points: list[dict], out: Path, *, name: str, settings: dict, command: str,
                  plot) -> tuple[Path, Path]:
    """`out/<name>.json` (the commands, the settings and every point) and the figure `plot` draws at
    `out/<name>.png`. A rerun that extends the curve keeps the earlier commands before its own, joined by " ; ", so
    the file names every command its points came from."""
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.json"
    earlier = json.loads(data.read_text()).get("command", "") if data.exists() else ""
    data.write_text(json.dumps({"command": joined_commands(earlier, command), "settings": settings, "points": points},
                               indent=2))
    return data, plot(points, out / f"{name}.png")


def compare_curves(curves: dict[str, dict], path: Path) -> Path:
    """Several runs' curves (label -> a `load_curve` result, e.g. the seeds of one recipe, or NP-Edit beside an
    ablation) overlaid in four panels: mean success, edit made, realism and preservation against the generator step.
    Curves scored with different settings are not comparable: a ValueError."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = {label: curve["settings"] for label, curve in curves.items()}
    first = next(iter(settings.values()))
    other = next((label for label, s in settings.items() if s != first), None)
    if other is not None:
        raise ValueError(f"{other} was scored with {settings[other]}, the first curve with {first}: not comparable")
    panels = (("success", "success (%)"), ("applied", "edit made (%)"), ("realism", "realism (%)"),
              ("preservation_db", "preservation outside the mask (dB)"))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for label, curve in curves.items():
        steps = [p["step"] for p in curve["points"]]
        for ax, (key, _) in zip(axes, panels):
            scale = 1 if key == "preservation_db" else 100
            ax.plot(steps, [scale * p["scores"]["mean"][key] for p in curve["points"]], marker="o", label=label)
    for ax, (key, title) in zip(axes, panels):
        ax.set(title=title, xlabel="generator step", **({} if key == "preservation_db" else {"ylim": (0, 100)}))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mean over edit types, {first.get('per_type')} held-out edits per type", fontsize=9)
    return _saved(fig, path)


def _saved(fig, path: Path) -> Path:
    """Write a finished figure to `path` (its folder made) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
