"""`npedit world ...`: look at the proof world and its verifier."""

from __future__ import annotations

import argparse
import random
from functools import partial
from pathlib import Path

from schemas.edit_types import EDIT_TYPES
from npedit.world_probe_cli import ceilings, curves, probe_critic, probe_instruction, probe_teacher, score
from world import PRETRAINED


def preview(args: argparse.Namespace) -> int:
    """A grid of world edits (source | instruction + verdict | rendered target) and the verifier's pass rates."""
    from training.visualize import save_edit_grid
    from world.edits import random_edit
    from world.evaluate import verdict_text
    from world.scene import render
    from world.score import score_edit

    rng = random.Random(args.seed)
    sources, texts, targets, passed = [], [], [], {t: 0 for t in EDIT_TYPES}
    for i in range(args.per_type * len(EDIT_TYPES)):
        edit = random_edit(rng, EDIT_TYPES[i % len(EDIT_TYPES)], size=args.size)
        target = render(edit.target)
        verdict = score_edit(edit, target)
        passed[edit.edit_type] += verdict.success
        sources.append(render(edit.source))
        targets.append(target)
        texts.append(verdict_text(edit, verdict))
    path = save_edit_grid(sources, texts, targets, Path(args.out) / "world_edits.png", cell=128)
    for edit_type, count in passed.items():
        print(f"{edit_type:20s} verifier success on rendered targets {count}/{args.per_type}")
    print(f"wrote {path}")
    return 0


# the models `--device` may move
TEACHER_STAGES = ("teacher", "teacher_anneal", "teacher_small_objects", "teacher_beside")


def _summaries(editors: list[Path] = (), teacher_patch: int = 2, device: str = "cpu",
               render_workers: int = 0) -> dict[str, tuple]:
    """Per world model: how to train it (out_dir, minutes, seed) and the one line that states its quality; the
    teacher's stages on `device`, their scenes drawn by `render_workers` processes."""
    from world.builder_vlm import train_builder
    from world.critic import finetune_critic, train_critic
    from world.critic_adversarial import finetune_on_attacks
    from world.critic_outputs import finetune_on_outputs
    from world.critic_robust import finetune_on_degraded
    from world.critic_smooth import finetune_under_noise
    from world.report import MEASURED_ON_IMAGES
    from world.teacher import anneal_teacher, draw_beside_references, focus_small_objects, train_teacher
    from world.vae import finetune_decoder, train_vae

    def teacher(out: Path, minutes: float, seed: int) -> dict:
        if not (out / "vae").exists():
            raise SystemExit(f"npedit: error: the teacher needs a world VAE in {out / 'vae'}: build it first")
        return train_teacher(out, out / "vae", minutes=minutes, seed=seed, patch_size=teacher_patch, device=device,
                             render_workers=render_workers)

    on_device = {"device": device, "render_workers": render_workers}

    def continued(name: str, stage: str, run):
        def train(out: Path, minutes: float, seed: int) -> dict:
            if not (out / name).exists():
                raise SystemExit(f"npedit: error: {stage} continues the {name} in {out / name}: build it first")
            return run(out, minutes=minutes, seed=seed)
        return train

    def teacher_line(q: dict) -> str:
        return (f"samples match their caption {q['caption_match']:.1%} (layout {q['layout_match']:.1%}; shapes: small "
                f"{q['small_shape_match']:.1%}, large {q['large_shape_match']:.1%})")

    def beside(out: Path, minutes: float, seed: int) -> dict:
        manifest = continued("teacher", "teacher_beside", partial(draw_beside_references, **on_device))(
            out, minutes, seed)
        phase = manifest["beside"]
        before, after = (phase[k]["caption_match"] for k in ("beside_reference_before", "beside_reference"))
        print(f"teacher_beside: beside an unrelated reference, samples match their caption {before:.1%} -> {after:.1%}")
        return manifest

    def critic_line(q: dict) -> str:
        line = f"held-out accuracy {q['accuracy']:.1%} (weakest question kind {q['weakest']:.1%})"
        if q.get("wrong_object"):
            line += (f"; refuses the asked change made to another object {q['wrong_object']['accuracy']:.1%} "
                     f"(weakest {q['wrong_object']['weakest']:.1%})")
        for key, what in MEASURED_ON_IMAGES.items():
            if q.get(key):
                line += f"; on {what} {q[key]['accuracy']:.1%} balanced (weakest {q[key]['weakest']:.1%})"
        return line

    def round_trips(out: Path, what: str) -> Path:
        """The VAE a critic stage makes its round trips through: the models folder's own, else the committed one."""
        vae = out / "vae" if (out / "vae").exists() else PRETRAINED / "vae"
        print(f"{what} through the VAE in {vae}")
        return vae

    def on_degraded(out: Path, minutes: float, seed: int) -> dict:
        return finetune_on_degraded(out, round_trips(out, "critic_robust: degrading renders"), minutes=minutes,
                                    seed=seed)

    def on_attacks(out: Path, minutes: float, seed: int) -> dict:
        return finetune_on_attacks(out, round_trips(out, "critic_adversarial: round trips"), minutes=minutes,
                                   seed=seed)

    def on_outputs(out: Path, minutes: float, seed: int) -> dict:
        try:
            return finetune_on_outputs(out, list(editors), minutes=minutes, seed=seed)
        except ValueError as error:
            raise SystemExit(f"npedit: error: {error}") from None

    def vae_line(q: dict) -> str:
        return (f"held-out PSNR {q['psnr_db']:.1f} dB, the verifier parses {q['parse_rate']:.1%} of reconstructions "
                f"(shapes: small {q['small_shape_match']:.1%}, large {q['large_shape_match']:.1%})" +
                (f"; {q['degraded_parse_rate']:.1%} of degraded latents" if "degraded_parse_rate" in q else ""))

    return {
        "vae": (lambda out, minutes, seed: train_vae(out, minutes=minutes, seed=seed), vae_line),
        "vae_decoder": (continued("vae", "vae_decoder", finetune_decoder), vae_line),
        "vae_decoder_robust": (continued("vae", "vae_decoder_robust", partial(finetune_decoder, degrade=1.0)),
                               vae_line),
        "teacher": (teacher, teacher_line),
        "teacher_anneal": (continued("teacher", "teacher_anneal", partial(anneal_teacher, **on_device)),
                           teacher_line),
        "teacher_small_objects": (continued("teacher", "teacher_small_objects",
                                            partial(focus_small_objects, **on_device)), teacher_line),
        "teacher_beside": (beside, teacher_line),
        "critic": (lambda out, minutes, seed: train_critic(out, minutes=minutes, seed=seed), critic_line),
        "critic_customization": (continued("critic", "critic_customization", finetune_critic), critic_line),
        "critic_anneal": (continued("critic", "critic_anneal", partial(finetune_critic, anneal=True)), critic_line),
        "critic_robust": (continued("critic", "critic_robust", on_degraded), critic_line),
        "critic_outputs": (continued("critic", "critic_outputs", on_outputs), critic_line),
        "critic_adversarial": (continued("critic", "critic_adversarial", on_attacks), critic_line),
        "critic_smooth": (continued("critic", "critic_smooth", finetune_under_noise), critic_line),
        "builder": (lambda out, minutes, seed: train_builder(out, minutes=minutes, seed=seed),
                    lambda q: f"caption match {q['caption_match']:.1%}, valid proposals {q['proposals_valid']:.1%}, "
                              f"validity agreement {q['validity_agreement']:.1%}, edited caption match "
                              f"{q['edited_caption_match']:.1%}, background captions hold the object "
                              f"{q['background_holds_object']:.1%}"),
    }


def build(args: argparse.Namespace) -> int:
    """Train the world's models from seeds, each under a time budget (resumable), each with a manifest of its quality."""
    import torch

    from world.report import CONTINUED

    if args.threads:
        torch.set_num_threads(args.threads)
    elsewhere = [name for name in args.models if name not in TEACHER_STAGES]
    if args.device != "cpu" and elsewhere:
        raise SystemExit(f"npedit: error: --device moves only the teacher's stages ({', '.join(TEACHER_STAGES)}); "
                         f"build {', '.join(elsewhere)} on the CPU")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"npedit: error: --device {args.device}: torch sees no CUDA device here")
    summaries = _summaries(args.editors, args.teacher_patch, args.device, args.render_workers)
    for name in args.models:
        train, summary = summaries[name]
        try:
            manifest = train(args.out, args.minutes, args.seed)
        except ValueError as error:
            raise SystemExit(f"npedit: error: {error}") from None
        phase = manifest.get(CONTINUED.get(name), manifest)
        print(f"{name}: {phase['steps']} steps, {phase['train_minutes']} min; {summary(manifest['quality'])}")
        if phase.get("loss_this_run", {}).get("steps") == 0:
            print(f"{name}: its budget was already spent; give more --minutes than {args.minutes:g} to continue it")
    print(f"models in {args.out}")
    return 0


def models(args: argparse.Namespace) -> int:
    """Each world model's measured quality (from its manifest), the critic's accuracy per question kind, and the
    folder's recipe.toml if it has one."""
    import tomllib

    from world import RECIPE_FILE
    from world.report import critic_table, model_quality, quality_line, recipe_line

    found = model_quality(args.models)
    if not found:
        raise SystemExit(f"npedit: error: no world model manifests in {args.models}")
    for name, facts in found.items():
        print(quality_line(name, facts))
    if "critic" in found:
        print("\n".join(critic_table(found["critic"]["quality"] or {})))
    if (args.models / RECIPE_FILE).exists():
        try:
            print(recipe_line(tomllib.loads((args.models / RECIPE_FILE).read_text())))
        except tomllib.TOMLDecodeError as error:
            raise SystemExit(f"npedit: error: {args.models / RECIPE_FILE}: not valid TOML: {error}") from None
    return 0


def experiment(args: argparse.Namespace) -> int:
    """NP-Edit and its ablations and a supervised editor on the world, scored by the verifier; results + report."""
    import sys

    import torch

    from world.experiment import VARIANTS, Experiment, run_experiment

    from npedit.train_cli import _parse_override
    from training.config import load_config

    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"npedit: error: unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    unknown = [t for t in args.edit_types if t not in EDIT_TYPES]
    if unknown:
        raise SystemExit(f"npedit: error: unknown edit type {unknown[0]!r}; known: {', '.join(EDIT_TYPES)}")
    if not args.supervised_edit_weight > 0:
        raise SystemExit(f"npedit: error: --supervised-edit-weight must be positive, got {args.supervised_edit_weight}")
    if not 0 <= args.supervised_identity_share < 1:
        raise SystemExit("npedit: error: --supervised-identity-share is in [0, 1), got "
                         f"{args.supervised_identity_share}")
    overrides = dict(_parse_override(s) for s in args.set)
    if args.customization_fraction:
        overrides["data.customization_fraction"] = args.customization_fraction
    experiment_config = Experiment(out=args.out, models=args.models, corpus=args.corpus, minutes=args.minutes,
                                   steps=args.steps, variants=tuple(args.variants), seeds=tuple(args.seeds),
                                   per_type=args.per_type, customization=args.customization,
                                   edit_types=tuple(args.edit_types), overrides=overrides, ceilings=args.ceilings,
                                   supervised_edit_weight=args.supervised_edit_weight,
                                   supervised_identity_share=args.supervised_identity_share,
                                   supervised_whom_pairs=args.supervised_whom_pairs)
    load_config("world_cpu", experiment_config.models_recipe,
                overrides=overrides)  # an unknown key or a bad value: one line now, not after a run
    for needed in (args.models / "teacher", args.models / "critic", args.corpus):
        if not needed.exists():
            raise SystemExit(f"npedit: error: {needed} does not exist: run `npedit world build` first")
    if args.threads:
        torch.set_num_threads(args.threads)
    run_experiment(experiment_config, command=" ".join(["npedit", *sys.argv[1:]]))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.md'}")
    return 0


def report(args: argparse.Namespace) -> int:
    """One report from an experiment whose runs were split over several --out folders."""
    import sys

    from world.merge import merge_results

    try:
        merge_results(args.parts, args.out, command=" ".join(["npedit", *sys.argv[1:]]))
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"npedit: error: {error}") from None
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.md'}")
    return 0


def corpus(args: argparse.Namespace) -> int:
    """Build a world corpus with the real builder (loopback images, img2dataset, the VLM stages) and print its stats."""
    from rich.console import Console

    from datasets_builder.stats import snapshot_stats
    from npedit.corpus_cli import print_result
    from world.corpus import build_world_corpus, corpus_summary

    console = Console()
    built = build_world_corpus(args.out, args.images, vlm=args.vlm, seed=args.seed, tag=args.tag, device=args.device,
                               on_event=console.print)
    for result in snapshot_stats(built.store, built.snapshot_id):
        print_result(console, result)
    summary = corpus_summary(built.store, built.snapshot_id)
    new = "new snapshot" if built.metadata.get("new_snapshot", True) else "already published; nothing new"
    print(f"snapshot {built.snapshot_id} ({new}) in {built.store.catalog}: {args.images} images in "
          f"{built.seconds:.1f} s ({args.images / built.seconds:.1f} images/s)")
    print("rows: " + ", ".join(f"{k} {v}" for k, v in summary["rows"].items()))
    print("proposals per edit type: " + ", ".join(f"{k} {v}" for k, v in summary["edit_types"].items())
          + f" (max/min {summary['max_min_ratio']}, {'balanced' if summary['balanced'] else 'UNBALANCED'})")
    band = "in band" if summary["validity_in_band"] else "OUT OF BAND"
    print(f"validity rate {summary['validity_rate']:.1%} ({band})")
    return 0


def benchmark(args: argparse.Namespace) -> int:
    """Held-out world edits as an ImgEdit-Bench Basic copy for `npedit eval generate`."""
    from world.benchmark import export_benchmark

    listing = export_benchmark(args.out, args.per_type)
    print(f"wrote {listing} ({args.per_type} edits per type); next: npedit eval generate --benchmark imgedit "
          f"--data {args.out} --checkpoint CKPT --out eval --resolution 64, then npedit world judge --benchmark "
          f"{args.out} --results eval/npedit")
    return 0


def judge(args: argparse.Namespace) -> int:
    """The world verifier as the judge of `eval generate`'s outputs on an exported world benchmark."""
    from world.benchmark import judge_results

    judged = judge_results(args.benchmark, args.results)
    mean = judged["summary"]["mean"]
    print(f"scored {judged['scored']} cases ({len(judged['missing'])} outputs missing): success {mean['success']:.0%}, "
          f"realism {mean['realism']:.0%}; scores.parquet and report.md in {judged['folder']}")
    return 0


def add_world_commands(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", help="the proof world: procedural scenes with computable truth")
    commands = world.add_subparsers(dest="world_command", required=True)
    p = commands.add_parser("preview", help="render world edits with the verifier's verdict into a PNG grid")
    p.add_argument("--out", type=Path, default=Path("world_preview"))
    p.add_argument("--per-type", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=preview)
    b = commands.add_parser("build", help="train the world's models from seeds (resumes a killed run)")
    stages = ["vae", "vae_decoder", "teacher", "teacher_anneal", "critic", "critic_customization", "critic_anneal",
              "builder"]
    b.add_argument("--models", nargs="+", choices=stages + ["vae_decoder_robust", "teacher_small_objects",
                                                              "teacher_beside", "critic_robust", "critic_outputs",
                                                              "critic_adversarial", "critic_smooth"],
                   default=stages,
                   help="which models, in this order (vae_decoder sharpens the VAE's decoder, its encoder frozen; "
                        "vae_decoder_robust continues it on latents degraded as editors degrade them; "
                        "teacher_anneal continues the teacher with its learning rate annealed to zero; "
                        "teacher_small_objects then with its loss weighted toward small objects; "
                        "teacher_beside then with half its batches drawn beside an unrelated scene as reference "
                        "(the editor's omni layout), from single scenes still; "
                        "critic_customization continues the critic on the customization questions too, "
                        "critic_anneal then with its rate annealed to zero; critic_robust continues it on "
                        "renders degraded as editors degrade them, answered by the verifier (through DIR/vae/, "
                        "else the committed VAE); "
                        "critic_outputs continues it on --editors' outputs answered by the verifier; "
                        "critic_adversarial continues it on editor-like outputs pushed against it by projected "
                        "gradient steps, answered by the verifier; critic_smooth continues it with its images under "
                        "Gaussian noise, answering for the clean image)")
    b.add_argument("--editors", type=Path, nargs="+", default=[],
                   help="for critic_outputs: editor checkpoints (e.g. an experiment's "
                        "runs/*/checkpoints/step-*/generator, or a teacher/)")
    b.add_argument("--teacher-patch", type=int, choices=[1, 2], default=2,
                   help="latent pixels per teacher token side, for a new teacher: 2 (the committed one's, a token per "
                        "8x8 world pixels) or 1 (four times the tokens, a token per 4x4 pixels)")
    b.add_argument("--minutes", type=float, default=15.0,
                   help="each stage's whole wall-time budget: a killed run resumes to it, a finished one continues "
                        "only when given more")
    b.add_argument("--out", type=Path, default=Path("world_models"))
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=0, help="torch threads (1 is fastest on a shared 2-core machine)")
    b.add_argument("--device", default="cpu", help="where the teacher's stages train (e.g. cuda); the others: cpu")
    b.add_argument("--render-workers", type=int, default=0,
                   help="processes drawing the teacher's training scenes (a GPU outruns one; 0: the trainer's own)")
    b.set_defaults(func=build)
    m = commands.add_parser("models", help="the world models' measured quality, from their manifests")
    m.add_argument("--models", type=Path, default=PRETRAINED, help="default: the committed world models")
    m.set_defaults(func=models)
    pt = commands.add_parser("probe-teacher", help="where the teacher's samples go wrong, per sampling setting")
    pt.add_argument("--models", type=Path, default=PRETRAINED, help="holds teacher/ (default: the committed one)")
    pt.add_argument("--samples", type=int, default=64, help="held-out captions per setting")
    pt.add_argument("--steps", type=int, nargs="+", default=[20], help="sampling steps to try")
    pt.add_argument("--cfg", type=float, nargs="+", default=[3.0], help="guidance scales to try")
    pt.add_argument("--shift", type=float, nargs="+", default=None, help="time shifts to try (default: the teacher's)")
    pt.add_argument("--grid", type=Path, default=None, metavar="PNG",
                    help="also write the first setting's first 16 samples beside their captions' renders")
    pt.add_argument("--vae", type=Path, default=None, metavar="DIR",
                    help="decode through the VAE in DIR (a decoder continued with the same encoder, e.g. by "
                         "world build --models vae_decoder_robust)")
    pt.add_argument("--threads", type=int, default=0)
    pt.set_defaults(func=probe_teacher)
    pc = commands.add_parser("probe-critic", help="how often the critic is right about editors' outputs (verifier truth)")
    pc.add_argument("--editors", type=Path, nargs="+",
                    help="editor checkpoints, e.g. an experiment's runs/*/checkpoints/step-*/generator")
    pc.add_argument("--colour-word", action="store_true",
                    help="instead of editors' outputs: whether the critic reads the colour a local colour edit asks "
                         "for, on renders of every answer (the asked colour, another, another object, none)")
    pc.add_argument("--wrong-object", action="store_true",
                    help="instead: how often the critic refuses the asked change made to another object of the scene "
                         "(its edit and identity questions; the held-out set of its manifest's quality.wrong_object)")
    pc.add_argument("--climb", action="store_true",
                    help="instead: follow the critic's gradient from held-out local colour sources as an editor does "
                         "under the VLM loss (in pixels, everywhere and inside the edit's mask alone, and through "
                         "--vae's latent) and say whether the verifier then sees the edit made")
    pc.add_argument("--climb-edit-type", choices=("local_color_change", "remove"), default="local_color_change",
                    help="with --climb: climb from these held-out edits' sources (remove: the trainer's questions ask "
                         "of the output alone whether it still holds the object)")
    pc.add_argument("--climb-presence", action="store_true",
                    help="with --climb on local colour edits: ask their edit question as a removal's is, of the output "
                         "alone (does it hold the object as the edit leaves it, and no longer as it was?)")
    pc.add_argument("--climb-steps", type=int, nargs="+", default=[10, 30, 100], metavar="N",
                    help="with --climb: the step counts measured")
    pc.add_argument("--climb-lr", type=float, default=0.02, help="with --climb: Adam's learning rate")
    pc.add_argument("--climb-views", type=int, default=1, metavar="K",
                    help="with --climb and --climb-noise: each step's gradient averaged over K noisy views")
    pc.add_argument("--climb-noise", type=float, default=0.0, metavar="SIGMA",
                    help="with --climb: Gaussian noise (images in [-1, 1]) added to every image the critic sees in "
                         "each view, as a critic smoothed under that noise sees them; measured on clean images")
    pc.add_argument("--climb-dmd", type=float, nargs="+", default=None, metavar="W",
                    help="with --climb and --teacher: also climb through the teacher's latent with the trainer's DMD "
                         "term at each weight W beside the VLM loss (its fake score as it starts), and with DMD alone "
                         "(whose weight Adam ignores)")
    pc.add_argument("--teacher", type=Path, default=None, metavar="DIR",
                    help="with --climb-dmd: the teacher (e.g. world/pretrained_patch1/teacher)")
    pc.add_argument("--grid", type=Path, default=None, metavar="PNG",
                    help="with --climb: a row per edit (source, target, each climb's last output)")
    pc.add_argument("--vae", type=Path, default=None, metavar="DIR",
                    help="with --colour-word: pass the renders through the VAE in DIR first, as editors' outputs "
                         "are; with --climb: also climb through its latent")
    pc.add_argument("--models", type=Path, default=PRETRAINED, help="holds critic/ (default: the committed one)")
    pc.add_argument("--per-type", type=int, default=12, help="fresh edits per edit type")
    pc.add_argument("--edit-types", nargs="+", choices=EDIT_TYPES, default=list(EDIT_TYPES), metavar="TYPE",
                    help="with --editors: the edit types asked")
    pc.add_argument("--seen", type=Path, default=None, metavar="CORPUS",
                    help="with --editors: also their outputs on the edits they trained on, from this world corpus "
                         "(a critic the editor exploits passes failing outputs there, not on held-out edits)")
    pc.add_argument("--curve", type=Path, default=None, metavar="DIR",
                    help="with --seen: the editors as one run's checkpoints, written as DIR/critic_exploit.json and "
                         ".png (failing outputs passed per question, seen against held-out edits, by step); a rerun "
                         "probes only new checkpoints")
    pc.add_argument("--threads", type=int, default=0)
    pc.set_defaults(func=probe_critic)
    pi = commands.add_parser("probe-instruction", help="whether editors paint the colour their instruction asks for")
    pi.add_argument("editors", type=Path, nargs="+", help="editor checkpoints (or a teacher: the untrained editor)")
    pi.add_argument("--per-type", type=int, default=24, help="held-out local colour edits (the experiment's)")
    pi.add_argument("--phrasing", default="Make {target} {colour}",
                    help="the instruction asked, naming {target} and {colour} (and may name {shape}, {where})")
    pi.add_argument("--seed", type=int, default=0, help="the sampling noise's seed, the same for every asked colour")
    pi.add_argument("--grid", type=Path, default=None, metavar="PNG",
                    help="also draw the first --grid-rows edits' outputs per editor, each labelled with the colour "
                         "asked and the one painted")
    pi.add_argument("--grid-rows", type=int, default=3)
    pi.add_argument("--curve", type=Path, default=None, metavar="DIR",
                    help="the editors are one run's checkpoints: write DIR/instruction_curve.json and .png against "
                         "the step each path names; a rerun probes only checkpoints not yet in it")
    pi.add_argument("--threads", type=int, default=0)
    pi.set_defaults(func=probe_instruction)
    sc = commands.add_parser("score", help="score editor checkpoints on held-out world edits with the verifier")
    sc.add_argument("editors", type=Path, nargs="+",
                    help="editor checkpoints, e.g. an experiment's runs/*/checkpoints/step-*/generator")
    sc.add_argument("--edit-types", nargs="+", choices=EDIT_TYPES, default=list(EDIT_TYPES), metavar="TYPE")
    sc.add_argument("--per-type", type=int, default=24, help="held-out edits per edit type (the experiment's)")
    sc.add_argument("--sampling-steps", type=int, nargs="+", default=[4], help="editor sampling steps to try")
    sc.add_argument("--seed", type=int, default=0, help="the sampling noise's seed (an experiment uses its run's)")
    sc.add_argument("--curve", type=Path, default=None,
                    help="also write DIR/curve.json and DIR/curve.png: the editors as one run's checkpoints, "
                         "scored against the step in their paths (none: step 0, the untrained editor); a rerun "
                         "into the same DIR scores only the checkpoints not yet in it")
    sc.add_argument("--vae", type=Path, default=None, metavar="DIR",
                    help="decode through the VAE in DIR (a decoder continued with the same encoder, e.g. by "
                         "world build --models vae_decoder_robust)")
    sc.add_argument("--threads", type=int, default=0)
    sc.set_defaults(func=score)
    ce = commands.add_parser("ceilings", help="score the true targets through the VAE and the teacher's drawings of "
                                              "them on the held-out edits")
    ce.add_argument("--models", type=Path, default=PRETRAINED, help="holds teacher/ (default: the committed one)")
    ce.add_argument("--edit-types", nargs="+", choices=EDIT_TYPES, default=list(EDIT_TYPES), metavar="TYPE")
    ce.add_argument("--per-type", type=int, default=24, help="held-out edits per edit type (the experiment's)")
    ce.add_argument("--seed", type=int, default=0, help="the teacher's sampling noise")
    ce.add_argument("--vae", type=Path, default=None, metavar="DIR",
                    help="decode through the VAE in DIR (a decoder continued with the same encoder, e.g. by "
                         "world build --models vae_decoder_robust)")
    ce.add_argument("--threads", type=int, default=0)
    ce.set_defaults(func=ceilings)
    cv = commands.add_parser("curves", help="overlay several runs' learning curves (from world score --curve)")
    cv.add_argument("curves", type=Path, nargs="+", help="folders holding a curve.json, e.g. one per seed")
    cv.add_argument("--labels", nargs="+", default=None, help="one label per curve (default: the folder names)")
    cv.add_argument("--out", type=Path, required=True, help="the PNG to write")
    cv.set_defaults(func=curves)
    e = commands.add_parser("experiment", help="NP-Edit vs its ablations and a supervised editor, scored by the verifier")
    e.add_argument("--out", type=Path, required=True, help="writes results.json, report.md, grids/ and runs/ here")
    e.add_argument("--models", type=Path, default=PRETRAINED,
                   help="holds teacher/ and critic/ (default: the committed world models)")
    e.add_argument("--corpus", type=Path, default=Path("world_corpus"), help="the world snapshot's lake")
    e.add_argument("--minutes", type=float, default=30.0, help="the first NP-Edit run's budget; it sets every run's steps")
    e.add_argument("--steps", type=int, default=None, help="a fixed generator-step budget instead of --minutes")
    e.add_argument("--variants", nargs="+", default=["teacher", "np_edit", "dmd_only", "vlm_only", "no_identity",
                                                     "supervised"])
    e.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="for np_edit and supervised; others use the first")
    e.add_argument("--per-type", type=int, default=25, help="held-out edits per edit type")
    e.add_argument("--customization", type=int, default=0,
                   help="also score this many held-out customization cases per run (object kept, scene changed)")
    e.add_argument("--customization-fraction", type=float, default=0.0,
                   help="share of NP-Edit's training samples that are customization (data.customization_fraction)")
    e.add_argument("--edit-types", nargs="+", default=list(EDIT_TYPES),
                   help="score (and, when fewer than all, train on) only these edit types")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a world_cpu config override for every NP-Edit run, over the models' own recipe.toml "
                        "if they have one, e.g. --set loss.lambda_dmd=2.0")
    e.add_argument("--ceilings", action=argparse.BooleanOptionalAction, default=True,
                   help="also score two ceilings once: the true targets through the VAE (no latent editor beats it) "
                        "and the teacher drawing the targets' captions (what DMD pulls toward)")
    e.add_argument("--supervised-edit-weight", type=float, default=1.0,
                   help="weigh the supervised editor's loss on the pixels an edit may change this many times the rest")
    e.add_argument("--supervised-identity-share", type=float, default=0.0,
                   help="this share of the supervised editor's pairs become their source returned unchanged, asked "
                        "nothing or something that changes nothing (an absent object, a colour it has)")
    e.add_argument("--supervised-whom-pairs", action="store_true",
                   help="the supervised editor's batches as pairs under one noise: each edit and the same change "
                        "asked of another object of its scene (\"only this object\" shown by pairs)")
    e.add_argument("--threads", type=int, default=0)
    e.set_defaults(func=experiment)
    bm = commands.add_parser("benchmark", help="held-out world edits as an ImgEdit-Bench Basic copy (for npedit eval)")
    bm.add_argument("--out", type=Path, required=True)
    bm.add_argument("--per-type", type=int, default=25, help="held-out edits per edit type")
    bm.set_defaults(func=benchmark)
    jd = commands.add_parser("judge", help="score npedit eval generate's outputs on a world benchmark with the verifier")
    jd.add_argument("--benchmark", type=Path, required=True, help="the folder `npedit world benchmark` wrote")
    jd.add_argument("--results", type=Path, required=True, help="OUT/METHOD of npedit eval generate")
    jd.set_defaults(func=judge)
    r = commands.add_parser("report", help="merge experiment runs split over several --out folders into one report")
    r.add_argument("parts", nargs="+", help="the experiment --out folders (same --steps); DIR:RUN,RUN keeps the named "
                                            "runs (np_edit_seed0), DIR:none only the folder's ceilings. One variant "
                                            "and seed in parts scoring disjoint edit types is joined: an editor per type")
    r.add_argument("--out", type=Path, required=True)
    r.set_defaults(func=report)
    c = commands.add_parser("corpus", help="build a world corpus with the real builder: loopback images, img2dataset, "
                                           "the VLM stages answered by the world oracle or a builder VLM")
    c.add_argument("--out", type=Path, default=Path("world_corpus"), help="images, work dir and lake (a rerun resumes)")
    c.add_argument("--images", type=int, default=200)
    c.add_argument("--vlm", default="oracle", help="'oracle' (the classical world oracle) or a builder VLM folder")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tag", default=None, help="a unique name for the snapshot")
    c.add_argument("--device", default="cpu", help="for a builder VLM: cpu or cuda")
    c.set_defaults(func=corpus)
