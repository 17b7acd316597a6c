"""`npedit world probe-teacher / probe-critic / score / curves`: measure the world's teacher, critic and editors with the
verifier's truth."""

from __future__ import annotations

import argparse
from pathlib import Path


def probe_teacher(args: argparse.Namespace) -> int:
    """The teacher's held-out samples at each sampling setting: its figures, what small objects' shapes come out as,
    and why the verifier rejects samples."""
    import itertools

    import torch

    from training.backbones import ZImageBackbone
    from world.teacher import probe_teacher as probe

    if not (args.models / "teacher").exists():
        raise SystemExit(f"npedit: error: no teacher in {args.models / 'teacher'}")
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = _decoding_with(ZImageBackbone.from_pretrained(args.models / "teacher"), args.vae)
    own_shift = teacher.shift
    for i, (steps, cfg, shift) in enumerate(itertools.product(args.steps, args.cfg, args.shift or [own_shift])):
        teacher.shift = shift
        found = probe(teacher, n=args.samples, cfg_scale=cfg, steps=steps, grid=args.grid if i == 0 else None)
        print(f"{steps} steps, guidance {cfg:g}, time shift {shift:g}: caption match {found['caption_match']:.1%}, "
              f"layout {found['layout_match']:.1%}, shapes small {found['small_shape_match']:.1%} / large "
              f"{found['large_shape_match']:.1%}")
        print("  small objects drawn as: " + ", ".join(f"{k} {v}" for k, v in found["small_shapes"].items()))
        print("  first problem of rejected samples: " + (", ".join(f"{k} ({v})" for k, v in found["problems"].items())
                                                        or "none"))
    if args.grid:
        print(f"wrote {args.grid} (the first setting's first 16 samples)")
    return 0


def _decoding_with(backbone, vae: Path | None):
    """`backbone`, decoding through the VAE in `vae` when one is given (one line and exit when it cannot)."""
    from world.vae import decode_with

    if vae is not None:
        if not (vae / "config.json").exists():
            raise SystemExit(f"npedit: error: no VAE in {vae} (a folder with config.json, e.g. world_models/vae)")
        try:
            decode_with(backbone, vae)
        except ValueError as error:
            raise SystemExit(f"npedit: error: {error}") from None
    return backbone


def ceilings(args: argparse.Namespace) -> int:
    """The two reference points of `world.ceilings` on the experiment's held-out edits, per edit type: the true
    targets through the VAE, and the teacher drawing the targets' captions."""
    import torch

    from training.backbones import ZImageBackbone
    from world.ceilings import CEILINGS, ceilings as score_ceilings
    from world.evaluate import held_out_edits

    if not (args.models / "teacher").exists():
        raise SystemExit(f"npedit: error: no teacher in {args.models / 'teacher'}")
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = _decoding_with(ZImageBackbone.from_pretrained(args.models / "teacher"), args.vae)
    found = score_ceilings(teacher, held_out_edits(args.per_type, edit_types=args.edit_types), seed=args.seed)
    for name, table in found.items():
        print(f"{name} ({CEILINGS[name]}):")
        for edit_type, s in table.items():
            print(f"  {_type_scores_line(edit_type, s)}")
    return 0


def _type_scores_line(edit_type: str, s: dict) -> str:
    """One edit type's verifier scores on one line, as `world ceilings` and `world score` print them; success and edit
    made with their 95 % intervals over the line's n edits."""
    from world.evaluate import share_interval

    def share(value: float) -> str:
        low, high = share_interval(value, s["n"])
        return f"{value:4.0%} ({low:.0%}-{high:.0%})"

    kept = "n/a" if s["preservation_db"] is None else f"{s['preservation_db']:.1f} dB"
    return (f"{edit_type:18s} success {share(s['success'])}  edit made {share(s['applied'])}  preservation {kept}  "
            f"realism {s['realism']:4.0%}  n {s['n']}")


def _check_editors_and_threads(args: argparse.Namespace) -> None:
    """One line and exit for a path in `args.editors` that is not an editor checkpoint; then `args.threads` applied."""
    import torch

    from world.critic_outputs import check_editors

    try:
        check_editors(args.editors)
    except ValueError as error:
        raise SystemExit(f"npedit: error: {error}") from None
    if args.threads:
        torch.set_num_threads(args.threads)


def probe_critic(args: argparse.Namespace) -> int:
    """How often the critic is right about editors' outputs on fresh world edits, per question kind, with the true
    answers from the verifier: is it fooled by what these editors draw?"""
    import torch

    from training.critics.qwen import QwenVLCritic

    if not (args.models / "critic").exists():
        raise SystemExit(f"npedit: error: no critic in {args.models / 'critic'}")
    if sum((bool(args.editors), args.colour_word, args.wrong_object, args.climb)) != 1:
        raise SystemExit("npedit: error: give --editors, --colour-word, --wrong-object or --climb (one of them)")
    if args.vae and not (args.colour_word or args.climb):
        raise SystemExit("npedit: error: --vae goes with --colour-word or --climb (editors decode through their own "
                         "VAE)")
    climb_flags = [flag for flag, given in (("--grid", args.grid), ("--climb-views", args.climb_views != 1),
                                            ("--climb-noise", args.climb_noise),
                                            ("--climb-dmd", args.climb_dmd is not None), ("--teacher", args.teacher),
                                            ("--climb-edit-type", args.climb_edit_type != "local_color_change"),
                                            ("--climb-presence", args.climb_presence))
                   if given]
    if climb_flags and not args.climb:
        raise SystemExit(f"npedit: error: {climb_flags[0]} goes with --climb")
    if args.vae and not (args.vae / "config.json").exists():
        raise SystemExit(f"npedit: error: {args.vae} holds no VAE (no config.json)")
    if args.seen and not args.editors:
        raise SystemExit("npedit: error: --seen goes with --editors (the corpus those editors trained on)")
    if args.colour_word:
        return _critic_colour_word(args)
    if args.wrong_object:
        return _critic_wrong_object(args)
    if args.climb:
        return _critic_climb(args)
    if args.curve and not args.seen:
        raise SystemExit("npedit: error: --curve goes with --seen (the curve is of seen against held-out edits)")
    _check_editors_and_threads(args)
    critic = QwenVLCritic.from_pretrained(args.models / "critic", dtype=torch.float32)
    return _critic_on_editors(args, critic)


def _critic_on_editors(args: argparse.Namespace, critic) -> int:
    """`probe-critic --editors`: the critic's balanced accuracy per question kind on each editor's outputs on held-out
    edits (and, with --seen, on the edits it trained on), the pool of the held-out ones, and with --curve the
    checkpoints' false-Yes shares as a curve."""
    import sys

    from world.critic_exploit import SETS, by_question, read_exploit, write_exploit_curve
    from world.critic_outputs import HELD_OUT_OUTPUTS_SEED, editor_questions, evaluate_on_outputs
    from world.curve import curve_points

    edit_types = tuple(args.edit_types)
    settings = {"per_type": args.per_type, "edit_types": list(edit_types), "corpus": str(args.seen),
                "critic": str(args.models / "critic")}
    try:
        measured = read_exploit(args.curve, settings) if args.curve else {}
        curve_points([(Path(e), {}) for e in {*measured, *map(str, args.editors)}] if args.curve else [])
    except ValueError as error:
        raise SystemExit(f"npedit: error: {error}") from None
    seen = _seen_edits(args.seen, args.per_type, edit_types) if args.seen else None
    pooled = []
    for editor in args.editors:
        if str(editor) in measured:
            print(f"{editor}: already in {args.curve / 'critic_exploit.json'}")
            continue
        asked = {"held_out": editor_questions([editor], args.per_type, seed=HELD_OUT_OUTPUTS_SEED,
                                              edit_types=edit_types)}
        if seen:
            asked["seen"] = editor_questions([editor], args.per_type, edits=seen, seed=HELD_OUT_OUTPUTS_SEED)
        pooled += asked["held_out"]
        found = {key: _print_found(f"{editor}, {SETS[key]}", evaluate_on_outputs(critic, questions))
                 for key, questions in asked.items()}
        measured[str(editor)] = {key: by_question(figures) for key, figures in found.items()}
    if len(args.editors) > 1 and pooled:
        _print_found("all editors pooled, held-out edits", evaluate_on_outputs(critic, pooled))
    if args.curve:
        png = write_exploit_curve(measured, args.curve, settings=settings, command=" ".join(["npedit", *sys.argv[1:]]))
        print(f"wrote {png} and {png.with_suffix('.json')}")
    return 0


def _print_found(name: str, found: dict) -> dict:
    print(f"{name}: balanced accuracy {found['accuracy']:.1%} over {found['n']} questions, weakest kind "
          f"{found['weakest']:.1%}")
    for kind, accuracy in found["per_kind"].items():
        false_yes = found["false_yes"].get(kind)
        print(f"  {kind:30s} {accuracy:6.1%}  (true answer Yes in {found['yes_share'][kind]:.0%}"
              + (f"; a failing output passed in {false_yes:.0%})" if false_yes is not None else ")"), flush=True)
    return found


def _seen_edits(corpus: Path, per_type: int, edit_types: tuple[str, ...]) -> list:
    """Up to `per_type` edits of each type from the snapshot an editor trained on, or a one-line exit."""
    from world.evaluate import training_edits

    if not corpus.exists():
        raise SystemExit(f"npedit: error: no world corpus at {corpus}")
    edits = training_edits(corpus, per_type, edit_types=edit_types)
    if not edits:
        raise SystemExit(f"npedit: error: {corpus}'s latest snapshot holds no valid world edit of "
                         f"{', '.join(edit_types)}")
    return edits


def _critic_wrong_object(args: argparse.Namespace) -> int:
    """`probe-critic --wrong-object`: the critic's accuracy when the asked change is made to another object of the
    scene (the held-out set its manifest's `quality.wrong_object` is measured on, at --per-type 24)."""
    import torch

    from training.critics.qwen import QwenVLCritic
    from world.critic import HELD_OUT_SEED, evaluate_critic
    from world.questions import wrong_object_questions

    if args.threads:
        torch.set_num_threads(args.threads)
    critic = QwenVLCritic.from_pretrained(args.models / "critic", dtype=torch.float32)
    found = evaluate_critic(critic, wrong_object_questions(HELD_OUT_SEED + 1, args.per_type))
    print(f"{args.models / 'critic'}: refuses the asked change made to another object in {found['accuracy']:.1%} "
          f"(weakest question kind {found['weakest']:.1%}; {args.per_type} per kind)")
    for kind, accuracy in found["per_kind"].items():
        print(f"  {kind:30s} {accuracy:6.1%}")
    return 0


def _critic_climb(args: argparse.Namespace) -> int:
    """`probe-critic --climb`: the critic's Yes climbed from held-out local colour (or removal) sources, in pixels
    (everywhere, and inside the edit's mask alone) and, with --vae, through that VAE's latent; the verifier's verdict at
    each step count."""
    import torch

    from training.critics.qwen import QwenVLCritic
    from training.backbones import ZImageBackbone
    from world.critic_climb import TeacherPrior, climb_critic, save_climb_grid
    from world.evaluate import held_out_edits
    from world.vae import load_vae

    if any(n < 1 for n in args.climb_steps):
        raise SystemExit(f"npedit: error: --climb-steps are positive step counts, not {args.climb_steps}")
    if args.climb_views < 1 or args.climb_noise < 0 or (args.climb_views > 1 and not args.climb_noise):
        raise SystemExit(f"npedit: error: --climb-views {args.climb_views} of --climb-noise {args.climb_noise:g}: "
                         "one view or more, noise 0 or more, and more than one view needs noise")
    if (args.climb_dmd is None) != (args.teacher is None) or any(w <= 0 for w in args.climb_dmd or ()):
        raise SystemExit("npedit: error: --climb-dmd W (W > 0) and --teacher DIR go together")
    if args.climb_presence and args.climb_edit_type == "remove":
        raise SystemExit("npedit: error: --climb-presence is for local colour edits: a removal's questions already ask "
                         "of the output alone")
    if args.teacher and not (args.teacher / "model_index.json").exists():
        raise SystemExit(f"npedit: error: {args.teacher} holds no teacher (no model_index.json)")
    if args.threads:
        torch.set_num_threads(args.threads)
    critic = QwenVLCritic.from_pretrained(args.models / "critic", dtype=torch.float32)
    edit_type, presence = args.climb_edit_type, args.climb_presence
    edits = held_out_edits(args.per_type, edit_types=(edit_type,))
    spaces = {"pixels": {}, "pixels in the mask": {"in_mask": True}}
    if args.vae:
        spaces["the VAE latent"] = {"vae": load_vae(args.vae).eval()}
    if args.teacher:
        teacher = ZImageBackbone.from_pretrained(args.teacher)
        for weight in args.climb_dmd:
            spaces[f"latent, DMD {weight:g}"] = {"prior": TeacherPrior(teacher, weight)}
        spaces["DMD alone"] = {"prior": TeacherPrior(teacher, 1.0), "follow_critic": False}  # Adam: any weight
    views = f"; the mean over {args.climb_views} views of noise {args.climb_noise:g}" if args.climb_noise else ""
    sources = {"local_color_change": "local colour", "remove": "removal"}[edit_type]
    asked = "; edit questions of the output alone (the object as left: Yes; as it was: No)" if presence else ""
    print(f"{args.models / 'critic'}: its Yes climbed from held-out {sources} sources (Adam, lr {args.climb_lr}"
          + (f"; the VAE in {args.vae}" if args.vae else "") + views + asked + ")")
    print(f"  {'climbed in':18s} {'steps':>5s} {'P(Yes) edit':>11s} {'identity':>8s} {'edit made':>9s} "
          f"{'success':>7s} {'asked colour':>12s} {'source colour':>13s} {'|change|':>8s}")
    climbed = {}
    for space, how in spaces.items():
        points, climbed[space] = climb_critic(critic, edits, steps=tuple(sorted(set(args.climb_steps))),
                                              lr=args.climb_lr, views=args.climb_views, noise=args.climb_noise,
                                              edit_type=edit_type, presence=presence, **how)
        for p in points:
            colours = "".join(f" {'n/a' if share is None else f'{share:.1%}':>{width}s}"
                              for share, width in ((p.asked_colour, 12), (p.source_colour, 13)))
            print(f"  {space:18s} {p.steps:5d} {p.p_yes_edit:11.3f} {p.p_yes_identity:8.3f} {p.made:9.1%} "
                  f"{p.success:7.1%}{colours} {p.change:8.1f}")
    print(f"  (n {len(climbed['pixels'])} edits; the verifier's 'edit made' and 'success'; the named object's colour is "
          "the palette colour nearest its interior's mean; |change| is from the source, 0-255)")
    if args.grid:
        print(f"wrote {save_climb_grid(edits, climbed, args.grid, edit_type=edit_type)}")
    return 0


def _critic_colour_word(args: argparse.Namespace) -> int:
    """`probe-critic --colour-word`: the critic's P(Yes) per kind of answer to held-out local colour edits."""
    import torch

    from training.critics.qwen import QwenVLCritic
    from world.critic_colour import critic_reads_colour
    from world.evaluate import held_out_edits
    from world.vae import load_vae

    if args.threads:
        torch.set_num_threads(args.threads)
    critic = QwenVLCritic.from_pretrained(args.models / "critic", dtype=torch.float32)
    found = critic_reads_colour(critic, held_out_edits(args.per_type, edit_types=("local_color_change",)),
                                vae=load_vae(args.vae) if args.vae else None)
    print(f"{args.models / 'critic'}: P(Yes) to the edit question when the named object is painted the asked colour "
          f"{found.asked:.3f}, another colour {found.other_colour:.3f}; another object painted the asked colour "
          f"{found.other_object:.3f}; nothing changed {found.unchanged:.3f}. The asked colour ranked first among the "
          f"object's colours in {found.ranked_first:.1%} (chance {found.chance:.1%}; n {found.n}"
          + (f"; through {args.vae}" if args.vae else "") + "). P(Yes) to the identity question (the rest kept?): "
          f"the right edit {found.identity_asked:.3f}, another object painted {found.identity_other_object:.3f}")
    return 0


def score(args: argparse.Namespace) -> int:
    """Score editor checkpoints on the experiment's held-out world edits with the verifier: one line per editor, edit
    type and number of sampling steps (a checkpoint mid-run, or the same editor sampled in more steps); with --curve,
    one run's checkpoints as a learning curve (curve.json, curve.png)."""
    import sys

    from training.backbones import ZImageBackbone
    from world.curve import curve_points, read_curve, write_curve
    from world.evaluate import held_out_edits, score_editor

    if args.curve and len(args.sampling_steps) > 1:
        raise SystemExit("npedit: error: --curve scores one number of sampling steps; give one --sampling-steps")
    _check_editors_and_threads(args)
    settings = {"per_type": args.per_type, "edit_types": list(args.edit_types), "sampling_steps": args.sampling_steps[0],
                "seed": args.seed} | ({"vae": str(args.vae.resolve())} if args.vae else {})
    try:
        earlier = read_curve(args.curve, settings) if args.curve else {}
    except ValueError as error:
        raise SystemExit(f"npedit: error: {error}") from None
    edits = held_out_edits(args.per_type, edit_types=args.edit_types)
    given = {str(e.resolve()) for e in args.editors}
    scored = [(Path(editor), scores) for editor, scores in earlier.items() if editor not in given]
    for editor_path in args.editors:
        if str(editor_path.resolve()) in earlier:
            print(f"{editor_path}: already in {args.curve / 'curve.json'}")
            scored.append((editor_path.resolve(), earlier[str(editor_path.resolve())]))
            continue
        editor = _decoding_with(ZImageBackbone.from_pretrained(editor_path), args.vae)
        for steps in args.sampling_steps:
            scores = score_editor(editor, edits, num_steps=steps, seed=args.seed)
            scored.append((editor_path.resolve(), scores))
            for edit_type, s in scores.items():
                print(f"{editor_path} [{steps} steps] {_type_scores_line(edit_type, s)}", flush=True)
    if args.curve:
        try:
            points = curve_points(scored)
        except ValueError as error:
            raise SystemExit(f"npedit: error: {error}") from None
        data, plot = write_curve(points, args.curve, settings=settings, command=" ".join(["npedit", *sys.argv[1:]]))
        print(f"wrote {data} and {plot}")
    return 0


def curves(args: argparse.Namespace) -> int:
    """Several runs' curves (written by `score --curve`) overlaid in one PNG, with the last point of each printed."""
    from world.curve import compare_curves, load_curve

    labels = args.labels or [folder.name for folder in args.curves]
    if len(labels) != len(args.curves):
        raise SystemExit(f"npedit: error: {len(labels)} labels for {len(args.curves)} curves")
    if len(set(labels)) != len(labels):
        raise SystemExit(f"npedit: error: two curves are labelled alike ({labels}): give --labels")
    try:
        loaded = {label: load_curve(folder) for label, folder in zip(labels, args.curves)}
        compare_curves(loaded, args.out)
    except ValueError as error:
        raise SystemExit(f"npedit: error: {error}") from None
    for label, curve in loaded.items():
        last = curve["points"][-1]
        mean = last["scores"]["mean"]
        print(f"{label}: step {last['step']}, success {mean['success']:.1%}, edit made {mean['applied']:.1%}, "
              f"realism {mean['realism']:.1%}, preservation {mean['preservation_db']:.1f} dB")
    print(f"wrote {args.out}")
    return 0


def probe_instruction(args: argparse.Namespace) -> int:
    """Whether each editor paints the colour its instruction asks for (every held-out local colour edit asked for
    every colour it may ask) and reads whom it names, one line per editor; with --curve, one run's checkpoints as the
    curve of those figures against the step."""
    import sys

    from schemas.errors import Refused
    from training.backbones import ZImageBackbone
    from world.curve import curve_points
    from world.evaluate import held_out_edits
    from world.instruction_curve import following_record, following_settings, read_following, write_following_curve
    from world.instruction_probe import check_phrasing, colour_following, save_colour_grid

    try:
        check_phrasing(args.phrasing)
    except Refused as error:
        raise SystemExit(f"npedit: error: {error}") from None
    _check_editors_and_threads(args)
    if args.grid_rows < 1:
        raise SystemExit(f"npedit: error: --grid-rows must be at least 1, not {args.grid_rows}")
    settings = following_settings(per_type=args.per_type, phrasing=args.phrasing, seed=args.seed)
    try:
        measured = read_following(args.curve, settings) if args.curve else {}
        curve_points([(Path(editor), {}) for editor in {*measured, *map(str, args.editors)}] if args.curve else [])
    except ValueError as error:
        raise SystemExit(f"npedit: error: {error}") from None
    edits = held_out_edits(args.per_type, edit_types=("local_color_change",))
    shown = {}
    for editor_path in args.editors:
        if str(editor_path) in measured and not args.grid:
            print(f"{editor_path}: already in {args.curve / 'instruction_curve.json'}")
            continue
        found = colour_following(ZImageBackbone.from_pretrained(editor_path), edits, phrasing=args.phrasing,
                                 seed=args.seed, grid_rows=args.grid_rows if args.grid else 0)
        print(f"{editor_path}: the asked colour {found.asked:.1%}, the source's kept {found.kept:.1%}, interior RGB "
              f"spread across the asked colours {found.spread:.1f}; its change with another object named "
              f"{found.other_object:.1f}, with no instruction {found.empty:.1f}; the source's colour kept with "
              f"another object named {found.kept_when_other_named:.1%} (that object painted the asked colour "
              f"{found.other_painted_when_named:.1%}), with no instruction {found.kept_when_empty:.1%} "
              f"(n {found.n}; {args.phrasing!r})",
              flush=True)
        shown[str(editor_path)] = found
        measured[str(editor_path)] = following_record(found)
    if args.grid:
        print(f"wrote {save_colour_grid(shown, args.grid, args.phrasing)}")
    if args.curve:
        png = write_following_curve(measured, args.curve, settings=settings,
                                    command=" ".join(["npedit", *sys.argv[1:]]))
        print(f"wrote {png} and {png.with_suffix('.json')}")
    return 0
