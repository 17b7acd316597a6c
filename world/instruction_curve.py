"""When does a run learn the colour word? `npedit world probe-instruction CHECKPOINTS... --curve DIR`: each checkpoint
of one run probed alike (`world.instruction_probe.colour_following`), written as `DIR/instruction_curve.json` and
`DIR/instruction_curve.png` (the asked colour and the source's kept, and the interior's spread and its change when
another object or nothing is named, against the generator step). A rerun probes only the checkpoints not yet in it."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

from world.curve import read_curve, write_probed_curve
from world.instruction_probe import ColourFollowing

NAME = "instruction_curve"


def following_record(found: ColourFollowing) -> dict:
    """The probe's figures, without the grid's images."""
    return {key: value for key, value in asdict(found).items() if key != "shown"}


def following_settings(**settings) -> dict:
    """What makes two probes comparable: `settings` (edits, phrasing, seed) and the figures the probe measures, so a
    curve probed before a figure was added is refused rather than mixed."""
    return {**settings, "measures": sorted(f.name for f in fields(ColourFollowing) if f.name != "shown")}


def read_following(out: Path, settings: dict) -> dict[str, dict]:
    """The editors already probed in `out` (path -> figures); probed with other settings is a ValueError."""
    return read_curve(out, settings, name=NAME, command="npedit world probe-instruction")


def write_following_curve(measured: dict[str, dict], out: Path, *, settings: dict, command: str = "") -> Path:
    """`out/instruction_curve.json` and `.png` from (editor path -> figures), ordered by the step each path names; two
    editors at one step (two runs) is a ValueError."""
    return write_probed_curve(measured, out, name=NAME, settings=settings, command=command, plot=plot_following)


def plot_following(points: list[dict], path: Path) -> Path:
    """Two panels against the generator step: the shares of outputs whose named object is in the asked colour or
    the source's (asked a colour, another object named, nothing asked); the interior's spread and changes (0-255)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    fig, (shares, rgb) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("asked", "asked a colour: that colour painted"), ("kept", "asked a colour: the source's kept"),
                       ("kept_when_other_named", "another object named: the source's kept"),
                       ("other_painted_when_named", "another object named: that one painted as asked"),
                       ("kept_when_empty", "no instruction: the source's kept")):
        shares.plot(steps, [100 * p["scores"][key] for p in points], marker="o", label=label)
    shares.set(title="the named object's colour in the outputs", xlabel="generator step", ylabel="%", ylim=(0, 100))
    for key, label in (("spread", "spread across the asked colours"),
                       ("other_object", "another object named: change from the asked output"),
                       ("empty", "no instruction: change from the asked output")):
        rgb.plot(steps, [p["scores"][key] for p in points], marker="o", label=label)
    rgb.set(title="the named object's interior (instruction read: high)", xlabel="generator step", ylabel="RGB (0-255)")
    for ax in (shares, rgb):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
