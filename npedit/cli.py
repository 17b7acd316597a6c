"""`npedit` console script: one subcommand per user-facing job."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations (via img2dataset) phones home at import
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _tiny_models(args: argparse.Namespace) -> int:
    from model_zoo import build_tiny_models

    models = build_tiny_models(args.cache_dir, seed=args.seed, force=args.force)
    for name, path in models.as_dict().items():
        print(f"{name:10s} {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.photos:
        from npedit.demo import run_demo

        run_demo(args.out, cache_dir=args.cache_dir)
    else:
        from npedit.world_demo import run_world_demo

        run_world_demo(args.out, steps=args.steps, edit_types=tuple(args.edit_types))
    return 0


def _ui(args: argparse.Namespace) -> int:
    import shutil

    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    from dagster_project.instance import ensure_instance_settings

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve())))
    ensure_instance_settings(home)
    command = [dagster, "dev", "-m", "dagster_project.definitions", "-h", "127.0.0.1", "-p", str(args.port)]
    os.execv(command[0], command)  # replaces this process: Ctrl-C reaches dagster dev directly


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny-models", help="build the seeded tiny model zoo (random weights, no network)")
    tiny.add_argument("--cache-dir", type=Path, default=None, help="default: $NPEDIT_HOME/tiny-models")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--force", action="store_true", help="rebuild even if the cache is complete")
    tiny.set_defaults(func=_tiny_models)

    demo = sub.add_parser("demo", help="NP-Edit end to end on the proof world from the committed world models "
                                       "(--photos: the real-photo path on the sample photos and tiny random models)")
    demo.add_argument("--out", type=Path, default=Path("demo_output"))
    demo.add_argument("--photos", action="store_true", help="the sample photos and tiny random models instead")
    demo.add_argument("--steps", type=int, default=150, help="world: NP-Edit generator steps")
    from npedit.world_demo import DEMO_EDIT_TYPES
    from schemas.edit_types import EDIT_TYPES

    demo.add_argument("--edit-types", nargs="+", choices=EDIT_TYPES, default=list(DEMO_EDIT_TYPES), metavar="TYPE",
                      help=f"world: the edit types trained and scored (default: {' '.join(DEMO_EDIT_TYPES)}; "
                           f"any of {', '.join(EDIT_TYPES)})")
    demo.add_argument("--cache-dir", type=Path, default=None, help="--photos: where the tiny models are built")
    demo.set_defaults(func=_demo)
    from npedit.corpus_cli import add_corpus_commands

    add_corpus_commands(sub)
    from npedit.train_cli import add_train_commands

    add_train_commands(sub)
    from npedit.world_cli import add_world_commands

    add_world_commands(sub)
    from npedit.eval_cli import add_eval_commands

    add_eval_commands(sub)

    ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1 over dagster_project.definitions")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; errors a user can act on print one line (NPEDIT_DEBUG=1 shows the traceback)."""
    args = build_parser().parse_args(argv)
    from schemas.errors import UserError

    try:
        return args.func(args)
    except (UserError, FileNotFoundError) as error:
        if os.environ.get("NPEDIT_DEBUG") == "1":
            raise
        print(f"npedit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
