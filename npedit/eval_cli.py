"""`npedit eval ...`: benchmark outputs from a trained checkpoint, their judging, DreamBooth's metrics, reports."""

from __future__ import annotations

import argparse
import re
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


def judge(args: argparse.Namespace) -> int:
    """Judge a results folder's outputs with a VLM, then write scores.parquet, report.md and gallery.html."""
    import os

    from datasets_builder.vlm.backends import make_backend
    from evaluation.benchmarks import GEDIT_LANGUAGES, load_gedit, load_imgedit
    from evaluation.judge import JudgeStats, judge_outputs, read_manifest, refuse_judge
    from evaluation.prompts import OURS
    from evaluation.report import JudgeInfo, write_report

    if not args.data.exists():
        raise SystemExit(f"npedit: error: --data {args.data}: no such folder (the benchmark's local copy)")
    if not args.results.is_dir():
        raise SystemExit(f"npedit: error: --results {args.results}: no such folder (OUT/METHOD of npedit eval "
                         "generate)")
    if (args.judge_backend == "openai") != (args.base_url is not None):
        raise SystemExit("npedit: error: --base-url is required with --judge-backend openai and only with it")
    if args.languages and args.benchmark != "gedit":
        raise SystemExit(f"npedit: error: --languages is for gedit, not {args.benchmark}")
    manifest = read_manifest(args.results)
    if manifest["benchmark"] != args.benchmark:
        raise SystemExit(f"npedit: error: {args.results} holds {manifest['benchmark']} outputs, not {args.benchmark}")
    refuse_judge(manifest, args.judge_model, allow=args.allow_critic_judge)
    if args.benchmark == "gedit":
        cases = load_gedit(args.data, languages=args.languages or GEDIT_LANGUAGES)
    else:
        cases = load_imgedit(args.data)
    options: dict = {}
    if args.judge_backend == "openai":
        options = {"base_url": args.base_url, "api_key": os.environ.get(args.api_key_env, "EMPTY")}
    elif args.judge_backend == "transformers":
        options = {"device": args.device or "cpu"}
    backend = make_backend(args.judge_backend, args.judge_model, **options)
    stats = JudgeStats()
    batch_size = args.batch_size or {"openai": 256, "vllm": 256, "transformers": 8}[args.judge_backend]
    judged = judge_outputs(args.benchmark, cases, args.results, backend, data_dir=args.data,
                           cache_path=args.results / "judge" / "cache.sqlite", batch_size=batch_size,
                           parse_attempts=args.parse_attempts, stats=stats, progress=True)
    files = write_report(args.benchmark, judged, args.results, manifest,
                         JudgeInfo(args.judge_backend, args.judge_model, OURS[args.benchmark]), stats)
    print(f"judged {len(judged)} cases ({stats.failed_cases} failed; {stats.generated} questions asked, "
          f"{stats.cached} from the cache); report in {files.folder}")
    return 0


def dreambooth(args: argparse.Namespace) -> int:
    """DINO, CLIP-I and CLIP-T of a method's DreamBooth outputs; dreambooth_scores.parquet and the report."""
    from evaluation.dreambooth import dreambooth_report

    if not args.data.exists():
        raise SystemExit(f"npedit: error: --data {args.data}: no such folder (the dataset/ folder of "
                         "google/dreambooth)")
    if not args.results.is_dir():
        raise SystemExit(f"npedit: error: --results {args.results}: no such folder (OUT of npedit eval generate)")
    if not (args.results / args.method).is_dir():
        raise SystemExit(f"npedit: error: --method {args.method}: no folder {args.results / args.method}")
    for flag, model in (("--dino", args.dino), ("--clip", args.clip)):
        hub_id = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", model) and not model.startswith(".")
        if not Path(model).expanduser().exists() and not hub_id:
            raise SystemExit(f"npedit: error: {flag} {model}: no such model folder, and not a hub id (owner/name)")
    report = dreambooth_report(args.data, args.results, args.method, args.dino, args.clip, device=args.device)
    means = ", ".join(f"{name} {'–' if value is None else f'{value:.4f}'}" for name, value in
                      zip(("DINO", "CLIP-I", "CLIP-T"), report.means.values()))
    print(f"scored {report.images} images ({report.missing} prompts without output): {means}; report in "
          f"{report.folder}")
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

    j = commands.add_parser("judge", help="score generated outputs with a VLM judge (never the training critic) and "
                                          "write scores.parquet, report.md and gallery.html under RESULTS/judge/")
    j.add_argument("--benchmark", choices=("gedit", "imgedit"), required=True)
    j.add_argument("--data", type=Path, required=True, help="the benchmark's local copy, in its published layout")
    j.add_argument("--results", type=Path, required=True, help="OUT/METHOD of npedit eval generate")
    j.add_argument("--judge-backend", choices=("openai", "transformers", "vllm"), required=True)
    j.add_argument("--judge-model", required=True, help="a hub id or path; for openai, the served model's name")
    j.add_argument("--base-url", default=None, help="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    j.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: the variable holding the API key")
    j.add_argument("--allow-critic-judge", action="store_true",
                   help="judge with the checkpoint's own training critic anyway (its scores reward hacking)")
    j.add_argument("--languages", nargs="+", choices=("en", "cn"), default=None, help="gedit: default both")
    j.add_argument("--batch-size", type=int, default=None,
                   help="questions per backend call (default: 256 for a server or vLLM, 8 for transformers)")
    j.add_argument("--parse-attempts", type=int, default=3, help="questions per case before an unparseable "
                                                                 "answer is recorded as a failure")
    j.add_argument("--device", default=None, help="transformers: default cpu")
    j.set_defaults(func=judge)

    d = commands.add_parser("dreambooth", help="DreamBooth's DINO, CLIP-I and CLIP-T of a method's outputs "
                                               "(RESULTS/METHOD/<subject>/<prompt index>.png); writes "
                                               "dreambooth_scores.parquet and dreambooth_report.md beside them")
    d.add_argument("--data", type=Path, required=True, help="the dataset/ folder of google/dreambooth (or the repo)")
    d.add_argument("--results", type=Path, required=True, help="results root: the outputs are in RESULTS/METHOD/")
    d.add_argument("--method", required=True, help="the method's folder name in the results")
    d.add_argument("--dino", required=True, help="DINO ViT by path or hub id, e.g. facebook/dino-vits16")
    d.add_argument("--clip", required=True, help="CLIP by path or hub id, e.g. openai/clip-vit-base-patch32")
    d.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    d.set_defaults(func=dreambooth)
