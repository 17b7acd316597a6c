"""`npedit eval ...`: benchmark outputs from a trained checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

BENCHMARKS = ("gedit", "imgedit", "dreambooth")


def generate(args: argparse.Namespace) -> int:
    """Edit every case of a benchmark with a checkpoint into the benchmark's result layout (resumable)."""
    from evaluation.benchmarks import GEDIT_LANGUAGES, load_dreambooth, load_gedit, load_imgedit
    from evaluation.generate import generate as generate_outputs
    from evaluation.generate import resolve_generator
    from schemas.errors import ConfigError

    if not args.data.exists():
        raise SystemExit(f"npedit: error: --data {args.data}: no such folder (the benchmark's local copy)")
    if not args.checkpoint.exists():
        raise SystemExit(f"npedit: error: --checkpoint {args.checkpoint}: no such run, checkpoint or generator dir")
    try:
        checkpoint = resolve_generator(args.checkpoint)
    except ConfigError as error:
        raise SystemExit(f"npedit: error: {error}") from None
    if args.benchmark == "gedit":
        cases = load_gedit(args.data, languages=args.languages or GEDIT_LANGUAGES, include_raw_image=True)
    elif args.languages:
        raise SystemExit(f"npedit: error: --languages is for gedit, not {args.benchmark}")
    elif args.benchmark == "imgedit":
        cases = load_imgedit(args.data)
    else:
        cases = load_dreambooth(args.data)
    result = generate_outputs(cases, checkpoint, args.out, method=args.method, num_steps=args.steps, seed=args.seed,
                              batch_size=args.batch_size, resolution=args.resolution, sampler=args.sampler,
                              device=args.device)
    print(f"generated {result.generated}, kept {result.skipped} already there; outputs and generation.json in "
          f"{result.folder}")
    return 0


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    from training.sampling import SAMPLERS

    ev = sub.add_parser("eval", help="benchmark evaluation of a trained editor")
    commands = ev.add_subparsers(dest="eval_command", required=True)
    g = commands.add_parser("generate", help="edit every benchmark case with a checkpoint, in the benchmark's "
                                             "result layout; resumes where a killed run stopped")
    g.add_argument("--benchmark", choices=BENCHMARKS, required=True)
    g.add_argument("--data", type=Path, required=True, help="the benchmark's local copy, in its published layout")
    g.add_argument("--checkpoint", type=Path, required=True, help="a run dir, a checkpoint dir or a generator dir")
    g.add_argument("--out", type=Path, required=True, help="results root; outputs go to OUT/METHOD/")
    g.add_argument("--method", default="npedit", help="the method's folder name in the results (default: npedit)")
    g.add_argument("--steps", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--resolution", type=int, default=512, help="about RESOLUTION^2 pixels, aspect ratio kept")
    g.add_argument("--languages", nargs="+", choices=("en", "cn"), default=None, help="gedit: default both")
    g.add_argument("--sampler", choices=SAMPLERS, default="renoise")
    g.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    g.set_defaults(func=generate)
