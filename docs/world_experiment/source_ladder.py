"""Where does learning the colour word stop as the sources grow? (section 25; section 24's one-source test is N = 1.)

A fixed set of N local colour edits on large objects (0 = a fresh one every step). Each step takes one of them and
asks for every free colour of its object, under one noise and time, trained by flow matching on the rendered targets.
Every PROBE_EVERY steps, `colour_following` on the set's first 8 sources (seen) and on 16 others (held out).
Usage: source_ladder.py TEACHER N STEPS [LR [OUT]]   e.g. world/pretrained_patch1/teacher 8 1500; with OUT, the
editor is saved there at the end (for `npedit world probe-instruction`), and the run's state (a `BudgetedRun`) at
every probe and every minute in OUT/ladder_state.pt, from which the same command resumes (to a larger STEPS too).
`source_ladder.py plot PNG LOG...` draws the spread per step, seen and held out, of each run's printed log (a log's
name labels its run)."""
import math
import random
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from training.backbones import ZImageBackbone, noise_to
from training.losses import flow_matching_loss
from world.budget import BudgetedRun
from world.edits import random_edit
from world.instruction_probe import _named_object, asks, colour_following
from world.scene import with_objects
from world.vae import renders

PROBE_EVERY = 250


def large_object_edits(rng: random.Random, count: int) -> list:
    """`count` local colour edits whose named object is large (an interior of many pixels)."""
    edits = []
    while len(edits) < count:
        edit = random_edit(rng, "local_color_change")
        if _named_object(edit).size == "large":
            edits.append(edit)
    return edits


def every_colour(backbone, edit) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(source latents, target latents, instruction encoding) for every colour the edit's object may take."""
    obj = _named_object(edit)
    others = [o for o in edit.source.objects if o is not obj]
    colours, instructions = zip(*asks(edit))
    sources = renders([edit.source] * len(colours))
    targets = renders([with_objects(edit.source, others + [replace(obj, colour=c)]) for c in colours])
    with torch.no_grad():
        return (backbone.encode_images(sources), backbone.encode_images(targets),
                backbone.encode_text(list(instructions), num_references=1, reference_images=sources))


def probe(backbone, step: int, seen: list, held_out: list, started: float) -> None:
    """Print `colour_following` on the seen and the held-out sources, a line each."""
    backbone.transformer.eval()
    for name, edits in (("seen", seen), ("held-out", held_out)):
        found = colour_following(backbone, edits)
        print(f"step {step} {name}: asked {found.asked:.1%} kept {found.kept:.1%} spread {found.spread:.1f} "
              f"other-object {found.other_object:.1f} empty {found.empty:.1f} n {found.n} "
              f"({time.time() - started:.0f}s)", flush=True)
    backbone.transformer.train()


def main(teacher: str, sources: int, steps: int, lr: float = 1e-4, out: str | None = None) -> None:
    """Train the teacher on N fixed sources (0: fresh ones) for `steps`, probing every PROBE_EVERY; save to `out`,
    resuming from its state when it holds one."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = random.Random(3)
    backbone = ZImageBackbone.from_pretrained(teacher)
    fixed = large_object_edits(rng, sources)
    cases = [every_colour(backbone, edit) for edit in fixed]
    seen = fixed[:8] if fixed else large_object_edits(random.Random(3), 8)
    held_out = large_object_edits(random.Random(11), 16)
    optimizer = torch.optim.AdamW(backbone.transformer.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    identity = {"teacher": str(Path(teacher).resolve()), "sources": sources, "lr": lr}
    try:
        run = BudgetedRun(Path(out) / "ladder_state.pt" if out else None, {"transformer": backbone.transformer},
                          optimizer, rng, max_steps=steps, eval_every_s=math.inf, progress=False, identity=identity)
    except ValueError as error:
        sys.exit(str(error))
    started = time.time()
    if run.step == 0:
        probe(backbone, 0, seen, held_out, started)
    while run.running():
        reference, x0, text = (cases[rng.randrange(sources)] if sources
                               else every_colour(backbone, large_object_edits(rng, 1)[0]))
        t = backbone.shift_time(torch.rand(1)).repeat(len(x0))
        eps = torch.randn_like(x0[:1]).repeat(len(x0), 1, 1, 1)
        velocity = backbone.predict_velocity(noise_to(x0, eps, t), t, text, reference=reference)
        loss = flow_matching_loss(velocity, x0, eps).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.transformer.parameters(), 1.0)
        optimizer.step()
        run.after_step(loss.item(), evaluate=dict)
        if run.step % 50 == 0:
            print(f"step {run.step} loss {loss.item():.4f} ({time.time() - started:.0f}s)", flush=True)
        if run.step % PROBE_EVERY == 0:
            probe(backbone, run.step, seen, held_out, started)
            run.save()
    run.finish()
    if out:
        backbone.transformer.eval()
        backbone.save_pretrained(out)


def plot(png: str, logs: list[str]) -> None:
    """Spread (0-255) against step, seen and held out, one line per log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for log in logs:
        found = re.findall(r"step (\d+) (seen|held-out): .*? spread ([\d.]+)", Path(log).read_text())
        for ax, which in zip(axes, ("seen", "held-out")):
            points = sorted({int(step): float(spread) for step, w, spread in found if w == which}.items())
            ax.plot(*zip(*points), marker="o", label=Path(log).stem)
    for ax, which in zip(axes, ("sources trained on", "held-out sources")):
        ax.set(title=which, xlabel="step", ylabel="spread over asked colours (0-255)")
        ax.grid(alpha=0.3)
    axes[1].legend()
    figure.suptitle("Does the painted colour follow the asked one? (the object interior's mean RGB, its spread)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["plot"] and len(args) > 2:
        plot(args[1], args[2:])
    elif 3 <= len(args) <= 5 and all(a.isdigit() for a in args[1:3]):
        main(args[0], int(args[1]), int(args[2]), *(float(a) for a in args[3:4]), *args[4:5])
    else:
        sys.exit("usage: source_ladder.py TEACHER N STEPS [LR [OUT]]  (N >= 0; 0: a fresh source every step)"
                 "  |  source_ladder.py plot PNG LOG...")
