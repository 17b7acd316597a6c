"""`npedit train` and `npedit edit`."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set expects key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.run import run_training

    overrides = dict(_parse_override(s) for s in args.set)
    if args.snapshot is not None:
        overrides["data.snapshot"] = args.snapshot
    if args.lake_dir is not None:
        overrides["data.lake_dir"] = str(args.lake_dir)
    if args.catalog is not None:
        overrides["data.catalog"] = args.catalog
    if args.data_path is not None:
        overrides["data.data_path"] = args.data_path
    if args.steps is not None:
        overrides["schedule.total_steps"] = args.steps
    config = load_config(args.recipe, args.config, overrides)
    trainer = run_training(config, args.out, resume=not args.fresh)
    print(f"trained to step {trainer.step}; checkpoints in {Path(args.out or config.log.out_dir) / 'checkpoints'}")
    return 0


def edit(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from evaluation.generate import load_backbone
    from schemas.errors import UserError
    from training.customization import customization_instruction
    from training.sampling import edit_images
    from training.visualize import from_pil, to_pil

    if args.task == "customize":
        if not (args.object and args.scene):
            raise UserError("--task customize needs --object and --scene")
        instruction = customization_instruction(args.object, args.scene)
    elif not args.instruction:
        raise UserError("--task edit needs --instruction")
    else:
        instruction = args.instruction
    backbone = load_backbone(args.checkpoint, args.device)  # Z-Image or FLUX.2 klein, as model_index.json says
    image = Image.open(args.image).convert("RGB")
    factor = backbone.spatial_factor
    width = args.width or max(factor, round(image.width / factor) * factor)
    height = args.height or max(factor, round(image.height / factor) * factor)
    reference = from_pil(image, (width, height)).unsqueeze(0)
    edited = edit_images(backbone, reference, [instruction], num_steps=args.steps, sampler=args.sampler,
                         generator=torch.Generator().manual_seed(args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    to_pil(edited[0]).save(args.out)
    print(f"wrote {args.out} ({width}x{height}, {args.steps} steps, {args.sampler} sampler): {instruction}")
    return 0


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    from training.config import RECIPES
    from training.sampling import SAMPLERS

    t = sub.add_parser("train", help="train the editor from a corpus snapshot (resumes from the latest checkpoint)")
    t.add_argument("--recipe", default="debug_tiny", choices=sorted(RECIPES))
    t.add_argument("--config", type=Path, default=None, help="TOML with [model] [data] [loss] ... tables on top")
    t.add_argument("--snapshot", default=None, help="snapshot id or tag (default: latest)")
    t.add_argument("--lake-dir", type=Path, default=None)
    t.add_argument("--catalog", default=None, help="a shared DuckLake catalog, e.g. 'postgres:dbname=npedit host=db'")
    t.add_argument("--data-path", default=None, help="the lake's Parquet folder (default: LAKE_DIR/data/)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--out", type=Path, default=None)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set loss.lambda_vlm=0.02")
    t.add_argument("--fresh", action="store_true", help="ignore existing checkpoints in --out")
    t.set_defaults(func=train)

    e = sub.add_parser("edit", help="edit an image with a trained generator (few steps, no CFG)")
    e.add_argument("--checkpoint", type=Path, required=True, help="a run dir, a checkpoint dir or a generator dir")
    e.add_argument("--image", type=Path, required=True)
    e.add_argument("--task", choices=("edit", "customize"), default="edit",
                   help="edit: follow --instruction; customize: put the image's --object into the --scene")
    e.add_argument("--instruction", help="the edit (--task edit)")
    e.add_argument("--object", help="--task customize: the object of the image, e.g. 'the red backpack'")
    e.add_argument("--scene", help="--task customize: the new scene, e.g. 'on a rock by a mountain lake'")
    e.add_argument("--steps", type=int, default=4)
    e.add_argument("--sampler", choices=SAMPLERS, default="renoise",
                   help="renoise: as the generator is trained (predict x0, re-noise with fresh noise); euler: ODE steps")
    e.add_argument("--out", type=Path, default=Path("edited.png"))
    e.add_argument("--width", type=int, default=None)
    e.add_argument("--height", type=int, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    e.set_defaults(func=edit)
