"""The world experiment runs every kind of variant end to end on smoke-trained world models and a fixture snapshot,
writes results.json with the contract's fields and a report, and a rerun resumes instead of training again."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from schemas.edit_types import EDIT_TYPES
from schemas.errors import Refused
from snapshot_fixture import write_fixture_snapshot
from training.backbones import ZImageBackbone
from world import PRETRAINED_PATCH1, PRETRAINED_WHOM
from world.ceilings import CEILINGS
from world.critic import train_critic
from world.experiment import Experiment, run_experiment
from world.teacher import train_teacher
from world.vae import train_vae


@pytest.fixture(scope="module")
def smoke_world_models(tmp_path_factory):
    models = tmp_path_factory.mktemp("world_models")
    train_vae(models, minutes=5, max_steps=2, eval_scenes=8, progress=False)
    train_teacher(models, models / "vae", minutes=5, max_steps=2, eval_samples=2, progress=False)
    train_critic(models, minutes=5, max_steps=1, eval_per_kind=1, progress=False)
    return models


@pytest.mark.slow
def test_experiment_writes_results_and_report_and_resumes(smoke_world_models, tmp_path):
    lake = tmp_path / "lake"
    write_fixture_snapshot(lake, objects=True)
    experiment = Experiment(out=tmp_path / "exp", models=smoke_world_models, corpus=lake, steps=2, per_type=1,
                            variants=("teacher", "np_edit", "supervised"), seeds=(0, 1), customization=2,
                            overrides={"data.customization_fraction": 0.5})
    logged = []
    results = run_experiment(experiment, command="npedit world experiment --steps 2", log=logged.append)
    runs = {(r["variant"], r["seed"]) for r in results["runs"]}
    assert runs == {("np_edit", 0), ("np_edit", 1), ("teacher", 0), ("supervised", 0), ("supervised", 1)}
    for run in results["runs"]:
        assert set(run["scores"]) == {*EDIT_TYPES, "mean"}
        assert set(run["scores"]["remove"]) >= {"success", "preservation_db", "realism", "n"}
        assert run["steps"] == (0 if run["variant"] == "teacher" else 2)
        assert run["customization"]["n"] == 2
    assert results["models"]["critic"]["steps"] == 1
    assert set(results["ceilings"]) == set(CEILINGS)
    for bound in results["ceilings"].values():
        assert set(bound) == {*EDIT_TYPES, "mean"} and bound["mean"]["n"] == len(EDIT_TYPES)
    assert results["ceilings"]["target_through_vae"]["mean"]["success"] < 0.5  # a VAE trained 2 steps keeps nothing
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "| the true target encoded and decoded by the editor's VAE |" in report
    assert "| np_edit | 2 | 2 |" in report and "Customization (the reference's object" in report
    assert "a share measured on 1 edits is known to ±40 points at most" in report  # Wilson at n 1: 0-0.79
    assert (tmp_path / "exp" / "grids" / "np_edit_seed0_customization.png").exists() and (tmp_path / "exp" / "grids" / "supervised_seed1.png").exists()
    saved = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert len(saved["runs"]) == 5
    trained = ZImageBackbone.from_pretrained(tmp_path / "exp" / "runs" / "supervised_seed1" / "generator")
    teacher = ZImageBackbone.from_pretrained(smoke_world_models / "teacher")  # saved, so `world score` can sample it
    assert any(not torch.equal(a, b) for a, b in zip(trained.transformer.parameters(), teacher.transformer.parameters()))
    logged.clear()
    run_experiment(experiment, log=logged.append)  # everything is done: nothing trains again
    assert logged == []


@pytest.mark.slow
def test_a_rerun_asking_for_more_steps_continues_the_shorter_runs_to_the_weights_of_a_straight_run(
        smoke_world_models, tmp_path):
    lake = tmp_path / "lake"
    write_fixture_snapshot(lake, objects=True)
    short = Experiment(out=tmp_path / "exp", models=smoke_world_models, corpus=lake, steps=2, per_type=1,
                       variants=("np_edit", "supervised"), seeds=(0,), edit_types=("remove",), ceilings=False)
    run_experiment(short, command="npedit world experiment --steps 2", log=lambda line: None)
    logged = []
    longer = run_experiment(replace(short, steps=3), command="npedit world experiment --steps 3", log=logged.append)
    regenerate = "npedit world experiment --steps 2 ; npedit world experiment --steps 3"  # both, so it regenerates
    assert longer["command"] == regenerate and f"Regenerate: `{regenerate}`" in (tmp_path / "exp/report.md").read_text()
    assert [(r["variant"], r["steps"], r["continued_from"]) for r in longer["runs"]] == [("np_edit", 3, 2),
                                                                                       ("supervised", 3, 2)]
    assert any("continued from the run scored at step 2" in line for line in logged)
    straight = run_experiment(replace(short, out=tmp_path / "straight", steps=3, variants=("supervised",)),
                              log=lambda line: None)
    assert "continued_from" not in straight["runs"][0]
    continued, fresh = (ZImageBackbone.from_pretrained(out / "runs" / "supervised_seed0" / "generator").transformer
                        for out in (tmp_path / "exp", tmp_path / "straight"))
    assert all(torch.equal(a, b) for a, b in zip(continued.parameters(), fresh.parameters()))
    with pytest.raises(Refused, match="np_edit_seed0 .* ran 3 steps, more than the 2 asked"):
        run_experiment(replace(short, variants=("supervised",)), log=lambda line: None)


@pytest.mark.slow
def test_the_supervised_editor_trains_on_whom_pairs_when_asked(smoke_world_models, tmp_path, monkeypatch):
    import world.supervised

    asked, edited_ways = [], world.supervised._edited_ways
    monkeypatch.setattr(world.supervised, "_edited_ways",
                        lambda edit, group, rng, whom=False: asked.append((group, whom)) or edited_ways(
                            edit, group, rng, whom))
    lake = tmp_path / "lake"
    write_fixture_snapshot(lake, objects=True)
    results = run_experiment(Experiment(out=tmp_path / "exp", models=smoke_world_models, corpus=lake, steps=1,
                                        per_type=1, variants=("supervised",), seeds=(0,),
                                        edit_types=("local_color_change",), ceilings=False,
                                        supervised_whom_pairs=True), log=lambda line: None)
    assert results["runs"][0]["whom_pairs"] is True and set(asked) == {(2, True)} and len(asked) == 4


def test_experiment_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    from npedit.cli import main

    with pytest.raises(SystemExit, match="unknown variant 'nope'"):
        main(["world", "experiment", "--out", str(tmp_path), "--variants", "nope"])
    with pytest.raises(SystemExit, match="does not exist: run `npedit world build` first"):
        main(["world", "experiment", "--out", str(tmp_path), "--models", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="unknown edit type 'stylez'"):
        main(["world", "experiment", "--out", str(tmp_path), "--edit-types", "stylez"])
    with pytest.raises(SystemExit, match="--set expects key=value"):
        main(["world", "experiment", "--out", str(tmp_path), "--set", "loss.lambda_dmd"])
    assert main(["world", "experiment", "--out", str(tmp_path), "--set", "loss.lambda_dmdd=2"]) == 2
    assert "no config field 'loss.lambda_dmdd'" in capsys.readouterr().err


@pytest.mark.slow
def test_world_demo_runs_from_the_committed_models_through_the_builder(tmp_path):
    from npedit.world_demo import _ceiling_line, _seen_line, run_world_demo
    from world.evaluate import training_edits
    from world.scene import render
    from world.score import score_edit

    grid = run_world_demo(tmp_path / "demo", images=24, steps=2, per_type=1, edit_types=EDIT_TYPES)
    assert grid.exists()
    results = json.loads((tmp_path / "demo" / "experiment" / "results.json").read_text())
    assert [(r["variant"], r["steps"]) for r in results["runs"]] == [("np_edit", 2), ("teacher", 0)]
    assert set(results["models"]) >= {"vae", "teacher", "critic"}
    assert all(set(r["scores"]) == {*EDIT_TYPES, "mean"} for r in results["runs"])
    assert all(r["scores"]["mean"]["applied"] is not None for r in results["runs"])
    line = _ceiling_line(results)
    assert "the true target encoded and decoded by the editor's VAE: success" in line and "the teacher drawing" in line
    seen = training_edits(tmp_path / "demo" / "world_corpus", 25)
    assert len(seen) >= 2 * len(EDIT_TYPES)  # 24 scenes x 4 proposals, 70 % valid
    assert all(score_edit(e, render(e.target)).success for e in seen)  # the corpus's edits, true to the world
    assert not any(score_edit(e, render(e.source)).success for e in seen)
    per_type_one = training_edits(tmp_path / "demo" / "world_corpus", 1)  # the demo scores per_type=1 of each
    assert all(r["seen_scores"]["mean"]["n"] == len(per_type_one) > 0 for r in results["runs"])
    assert "edits from its own training corpus" in _seen_line(results)


def _part(folder, runs, recipe=None):
    folder.mkdir()
    scores = {t: {"success": 0.5, "preservation_db": 30.0, "realism": 1.0, "untouched_objects_kept": 1.0, "n": 1}
              for t in [*EDIT_TYPES, "mean"]}
    results = {"command": f"npedit world experiment --out {folder}", "models": {},
               "runs": [{"variant": v, "seed": s, "steps": n, "train_minutes": 1.0, "scores": scores} for v, s, n in runs],
               **({"models_recipe": recipe} if recipe else {})}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_runs_split_over_folders_merge_into_one_report_and_mismatches_are_refused(tmp_path, capsys):
    from npedit.cli import main

    a = _part(tmp_path / "a", [("np_edit", 0, 300), ("teacher", 0, 0)])
    b = _part(tmp_path / "b", [("supervised", 0, 300), ("np_edit", 1, 300)])
    assert main(["world", "report", str(a), str(b), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in merged["runs"]) == [
        ("np_edit", 0), ("np_edit", 1), ("supervised", 0), ("teacher", 0)]
    assert "| np_edit | 2 | 300 |" in (tmp_path / "merged" / "report.md").read_text()
    c = _part(tmp_path / "c", [("np_edit", 0, 300)])
    with pytest.raises(SystemExit, match="a run appears in more than one part"):
        main(["world", "report", str(a), str(c), "--out", str(tmp_path / "x")])
    d = _part(tmp_path / "d", [("dmd_only", 0, 100)])
    with pytest.raises(SystemExit, match="different step budgets"):
        main(["world", "report", str(a), str(d), "--out", str(tmp_path / "y")])
    e = _part(tmp_path / "e", [("dmd_only", 0, 300)], recipe={"loss": {"lambda_dmd": 0.1}})
    with pytest.raises(SystemExit, match="different models' recipe.toml values"):
        main(["world", "report", str(a), str(e), "--out", str(tmp_path / "z")])
    f = _part(tmp_path / "weighted", [("supervised", 1, 300)])
    weighted = json.loads((f / "results.json").read_text())
    weighted["runs"][0]["edit_weight"] = 10.0
    (f / "results.json").write_text(json.dumps(weighted))
    with pytest.raises(SystemExit, match="weigh the edit differently"):
        main(["world", "report", str(b), str(f), "--out", str(tmp_path / "w")])
    assert main(["world", "report", str(a), str(f), "--out", str(tmp_path / "v")]) == 0
    assert "weighs the latent pixels an edit may change 10 times the rest" in (tmp_path / "v" / "report.md").read_text()
    f = _part(tmp_path / "f", [("np_edit", 2, 300)], recipe={"loss": {"lambda_dmd": 0.1}})
    assert main(["world", "report", str(e), str(f), "--out", str(tmp_path / "merged_recipe")]) == 0
    assert ("The NP-Edit runs train with the models' `recipe.toml` over world_cpu: loss.lambda_dmd = 0.1."
            in (tmp_path / "merged_recipe" / "report.md").read_text())


def _one_type_part(folder, edit_type, runs, success, ceilings=None):
    """A part scored on one or more edit types: each type's success as given, a grid per run."""
    types = [edit_type] if isinstance(edit_type, str) else edit_type
    scores = {t: {"success": success, "preservation_db": 30.0, "realism": 1.0, "applied": success, "n": 96}
              for t in types}
    scores["mean"] = dict(scores[types[0]], n=96 * len(types))
    (folder / "grids").mkdir(parents=True)
    for variant, seed, _ in runs:
        (folder / "grids" / f"{variant}_seed{seed}.png").write_bytes(b"png")
    (folder / "grids" / f"{runs[0][0]}_seed{runs[0][1]}_customization.png").write_bytes(b"png")
    results = {"command": f"npedit world experiment --out {folder}", "models": {},
               "runs": [{"variant": v, "seed": s, "steps": n, "train_minutes": 2.0, "scores": scores,
                         "seen_scores": scores} for v, s, n in runs], **({"ceilings": ceilings} if ceilings else {})}
    (folder / "results.json").write_text(json.dumps(results))
    return str(folder)


def test_one_type_experiments_join_into_one_per_type_report_and_overlaps_are_refused(tmp_path, capsys):
    from npedit.cli import main

    remove = _one_type_part(tmp_path / "remove", "remove", [("np_edit", 0, 600), ("teacher", 0, 0)], 0.4)
    replace = _one_type_part(tmp_path / "replace", "replace", [("np_edit", 0, 600), ("teacher", 0, 0)], 0.1)
    bound = {"success": 0.7, "preservation_db": 35.0, "realism": 0.9, "applied": 0.8, "n": 96}
    ceilings = _one_type_part(tmp_path / "ceilings", ["remove", "replace"], [("teacher", 0, 0)], 0.0,
                              ceilings={"teacher_draws_target": {"remove": bound, "replace": dict(bound, success=0.3),
                                                                 "mean": bound}})
    assert main(["world", "report", remove, replace, f"{ceilings}:none", "--out", str(tmp_path / "joined")]) == 0
    merged = json.loads((tmp_path / "joined" / "results.json").read_text())
    np_edit = next(r for r in merged["runs"] if r["variant"] == "np_edit")
    assert sorted(np_edit["scores"]) == ["mean", "remove", "replace"]
    assert np_edit["scores"]["mean"]["success"] == pytest.approx(0.25) and np_edit["scores"]["mean"]["n"] == 192
    assert np_edit["seen_scores"]["mean"]["success"] == pytest.approx(0.25) and np_edit["train_minutes"] == 4.0
    assert merged["ceilings"]["teacher_draws_target"]["mean"]["success"] == pytest.approx(0.5)
    report = (tmp_path / "joined" / "report.md").read_text()
    assert "| np_edit | 1 | 600 | 4.0 | 25% |" in report
    assert "np_edit seed 0 (remove / replace)" in report
    assert sorted(p.name for p in (tmp_path / "joined" / "grids").iterdir()) == [
        "np_edit_seed0_remove.png", "np_edit_seed0_remove_customization.png", "np_edit_seed0_replace.png",
        "np_edit_seed0_replace_customization.png", "teacher_seed0_remove.png", "teacher_seed0_replace.png"]
    twice = r"a run appears in more than one part: teacher_seed0 scores \['remove', 'replace'\] twice"
    with pytest.raises(SystemExit, match=twice):
        main(["world", "report", remove, replace, ceilings, "--out", str(tmp_path / "overlap")])
    with pytest.raises(SystemExit, match="has no run np_edit_seed3: it has teacher_seed0"):
        main(["world", "report", remove, f"{ceilings}:np_edit_seed3", "--out", str(tmp_path / "missing")])
    seed1 = _one_type_part(tmp_path / "seed1", "remove", [("np_edit", 1, 600)], 0.5)
    with pytest.raises(SystemExit, match="runs of one variant cover different edit types"):
        main(["world", "report", remove, replace, seed1, "--out", str(tmp_path / "uneven")])
    assert main(["world", "report", remove, f"{seed1}:np_edit_seed1", "--out", str(tmp_path / "seeds")]) == 0
    assert "| np_edit | 2 | 600 |" in (tmp_path / "seeds" / "report.md").read_text()
    assert sorted(p.name for p in (tmp_path / "seeds" / "grids").iterdir()) == [
        "np_edit_seed0.png", "np_edit_seed0_customization.png", "np_edit_seed1.png", "np_edit_seed1_customization.png",
        "teacher_seed0.png"]
    assert not (tmp_path / "overlap").exists() and not (tmp_path / "uneven").exists()


def test_the_models_recipe_sets_what_the_world_cpu_recipe_does_not_and_set_and_variants_override_it(tmp_path, capsys):
    from npedit.cli import main
    from world.experiment import _config

    models = tmp_path / "models"
    models.mkdir()
    plain = Experiment(out=tmp_path / "out", models=models, corpus=tmp_path / "lake")
    assert _config(plain, "np_edit", 0, tmp_path / "run", 300).loss.lambda_dmd == 0.5  # world_cpu's own
    (models / "recipe.toml").write_text("[loss]\nlambda_dmd = 0.1\n[schedule]\nwarmup_steps = 20\n")
    config = _config(plain, "np_edit", 0, tmp_path / "run", 300)
    assert (config.loss.lambda_dmd, config.schedule.warmup_steps) == (0.1, 20)
    assert _config(plain, "vlm_only", 0, tmp_path / "run", 300).loss.lambda_dmd == 0.0  # the variant wins
    overridden = Experiment(out=tmp_path / "out", models=models, corpus=tmp_path / "lake",
                            overrides={"loss.lambda_dmd": 0.25})
    assert _config(overridden, "np_edit", 0, tmp_path / "run", 300).loss.lambda_dmd == 0.25  # --set wins
    committed = Experiment(out=tmp_path / "out", models=PRETRAINED_PATCH1, corpus=tmp_path / "lake")
    assert _config(committed, "np_edit", 0, tmp_path / "run", 300).loss.lambda_dmd == 0.1
    (models / "recipe.toml").write_text("[loss]\nlambda_dmdd = 0.1\n")
    assert main(["world", "experiment", "--out", str(tmp_path / "out"), "--models", str(models)]) == 2
    assert "unknown key 'lambda_dmdd' in [loss]" in capsys.readouterr().err
    (models / "teacher").mkdir()
    (models / "teacher" / "manifest.json").write_text('{"quality": {"caption_match": 0.5}}')
    (models / "recipe.toml").write_text("[loss\n")
    with pytest.raises(SystemExit, match="recipe.toml: not valid TOML"):
        main(["world", "models", "--models", str(models)])


def _scores(applied: float, realism: float, n: int = 24) -> dict:
    return {t: {"success": applied * realism, "applied": applied, "preservation_db": 30.0, "realism": realism,
                "untouched_objects_kept": 1.0, "n": n} for t in [*EDIT_TYPES, "mean"]}


def test_the_papers_pattern_is_judged_against_the_noise_of_its_case_counts():
    from world.report import expected_pattern

    def runs(np_realism: float, vlm_realism: float, n: int = 24) -> dict:
        return {"np_edit": [{"scores": _scores(0.5, np_realism, n)}],
                "vlm_only": [{"scores": _scores(0.5, vlm_realism, n)}]}

    # 24 cases each at 90 % and 50 %: pooled p 0.7, two standard errors 2 * sqrt(0.21 * 2 / 24) = 26.5 points
    assert expected_pattern(runs(0.9, 0.5)) == [
        "- VLM only loses realism: vlm_only 50% vs np_edit 90% (mean realism, n 24 and 24; noise ±26%): **seen**"]
    assert expected_pattern(runs(0.9, 0.75))[0].endswith("**within noise**")
    assert expected_pattern(runs(0.9, 0.75, n=400))[0].endswith("**seen**")
    assert expected_pattern(runs(0.5, 0.9))[0].endswith("**the opposite**")
    # pooled p (0.45 * 48 + 0.9 * 24) / 72 = 0.6: 2 * sqrt(0.24 * (1/48 + 1/24)) = 24.5 points
    close = expected_pattern({"np_edit": [{"scores": _scores(0.5, 0.9)}, {"scores": _scores(0.4, 0.9)}],
                              "supervised": [{"scores": _scores(0.9, 0.9)}]})
    assert close[0] == ("- NP-Edit is close to the supervised editor (edit made): np_edit 45% vs supervised 90% "
                        "(mean applied, n 48 and 24; noise ±24%): **not seen**")


def test_world_models_prints_the_committed_models_and_refuses_a_folder_without_any(tmp_path, capsys):
    from npedit.cli import main

    assert main(["world", "models"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("vae: ") and "teacher: " in printed and "| background |" in printed
    assert "min (then anneal); caption_match" in printed  # steps and minutes count every phase of its training
    assert "recipe.toml" not in printed  # the committed models train with world_cpu as it is
    assert main(["world", "models", "--models", str(PRETRAINED_PATCH1)]) == 0
    assert "recipe.toml` over world_cpu: loss.lambda_dmd = 0.1." in capsys.readouterr().out
    assert main(["world", "models", "--models", str(PRETRAINED_WHOM)]) == 0
    printed = capsys.readouterr().out  # phases in the order they ran, the one run again included
    assert "(then finetune and anneal and anneal_2)" in printed and "| edit, asked of another object |" in printed
    with pytest.raises(SystemExit, match="no world model manifests in"):
        main(["world", "models", "--models", str(tmp_path)])


def test_a_share_measured_on_few_edits_gets_its_wilson_interval():
    from world.evaluate import share_interval

    # by hand, z = 1.96: centre (p + z²/2n) / (1 + z²/n), half-width z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)
    assert share_interval(0.5, 24) == pytest.approx((0.3143, 0.6857), abs=1e-4)
    assert share_interval(0.0, 24) == pytest.approx((0.0, 0.1380), abs=1e-4)  # no success seen: up to 14 % allowed
    assert share_interval(9 / 96, 96) == pytest.approx((0.0501, 0.1687), abs=1e-4)


def test_world_score_prints_the_verifiers_scores_of_an_editor_checkpoint(tmp_path, capsys):
    from npedit.cli import main
    from training.backbones import ZImageBackbone
    from world import PRETRAINED
    from world.evaluate import held_out_edits, score_editor, share_interval

    teacher = PRETRAINED / "teacher"
    assert main(["world", "score", str(teacher), "--edit-types", "insertion", "--per-type", "2",
                 "--sampling-steps", "1", "2", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # 2 step counts x (insertion + mean)
    expected = score_editor(ZImageBackbone.from_pretrained(teacher), held_out_edits(2, edit_types=["insertion"]),
                            num_steps=2)["insertion"]
    assert "[2 steps] insertion" in lines[2] and f"realism {expected['realism']:4.0%}" in lines[2]
    low, high = share_interval(expected["success"], expected["n"])
    assert f"success {expected['success']:4.0%} ({low:.0%}-{high:.0%})" in lines[2]
    assert f"n {expected['n']}" in lines[2]
    with pytest.raises(SystemExit, match="not an editor checkpoint"):
        main(["world", "score", str(tmp_path)])


def test_world_score_and_ceilings_decode_through_another_vae_only_when_it_reads_the_same_latents(tmp_path, capsys):
    import shutil

    from npedit.cli import main
    from world import PRETRAINED
    from world.vae import load_vae, train_vae

    teacher, args = PRETRAINED / "teacher", ["--edit-types", "background", "--per-type", "2", "--threads", "1"]
    assert main(["world", "score", str(teacher), "--sampling-steps", "1", *args]) == 0
    own = capsys.readouterr().out
    robust = tmp_path / "robust"
    shutil.copytree(PRETRAINED / "vae", robust)
    vae = load_vae(robust)
    with torch.no_grad():  # another decoder over the same encoder: the outputs (and so the scores' line) change
        vae.decoder.conv_out.bias.add_(0.8)
    vae.to(torch.float16).save_pretrained(robust)
    assert main(["world", "score", str(teacher), "--sampling-steps", "1", "--vae", str(robust), *args]) == 0
    assert capsys.readouterr().out != own
    assert main(["world", "ceilings", "--vae", str(PRETRAINED / "vae"), *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("target_through_vae") and "background" in lines[1] and "n 2" in lines[1]
    assert any(line.startswith("teacher_draws_target") for line in lines)
    train_vae(tmp_path / "other", minutes=10, max_steps=1, batch_size=4, eval_scenes=4, progress=False)
    for command in (["score", str(teacher)], ["ceilings"]):
        with pytest.raises(SystemExit, match="another encoder or latent statistics"):
            main(["world", *command, "--vae", str(tmp_path / "other" / "vae"), *args])
    with pytest.raises(SystemExit, match="no VAE in"):
        main(["world", "score", str(teacher), "--vae", str(tmp_path), *args])
    with pytest.raises(SystemExit, match="no teacher in"):
        main(["world", "ceilings", "--models", str(tmp_path), *args])


def test_probe_teacher_prints_where_samples_go_wrong_and_draws_them_beside_their_captions(tmp_path, capsys):
    from PIL import Image

    from npedit.cli import main
    from world import PRETRAINED

    grid = tmp_path / "samples.png"
    assert main(["world", "probe-teacher", "--samples", "3", "--steps", "2", "--grid", str(grid), "--vae",
                 str(PRETRAINED / "vae"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 steps, guidance 3" in out and "small objects drawn as" in out and f"wrote {grid}" in out
    assert Image.open(grid).size == (3 * 128, 3 * 128)  # one row per sample: render | caption and verdict | sample


def test_world_score_curve_orders_one_runs_checkpoints_by_step_and_refuses_two_runs(tmp_path, capsys):
    import shutil

    from npedit.cli import main
    from world import PRETRAINED
    from world.curve import checkpoint_step

    assert checkpoint_step(tmp_path / "runs/np_edit_seed0/checkpoints/step-0000500/generator") == 500
    assert checkpoint_step(PRETRAINED / "teacher") == 0
    later = tmp_path / "run" / "checkpoints" / "step-0000010" / "generator"
    shutil.copytree(PRETRAINED / "teacher", later)  # the same weights at step 10: the same scores
    assert main(["world", "score", str(later), str(PRETRAINED / "teacher"), "--edit-types", "background",
                 "--per-type", "2", "--sampling-steps", "1", "--threads", "1", "--curve", str(tmp_path / "c")]) == 0
    assert "curve.png" in capsys.readouterr().out
    points = json.loads((tmp_path / "c" / "curve.json").read_text())["points"]
    assert [p["step"] for p in points] == [0, 10]
    assert points[0]["scores"] == points[1]["scores"] and set(points[0]["scores"]) == {"background", "mean"}
    assert (tmp_path / "c" / "curve.png").stat().st_size > 0
    latest = tmp_path / "run" / "checkpoints" / "step-0000020" / "generator"
    shutil.copytree(PRETRAINED / "teacher", latest)  # a rerun adds the new checkpoint and scores only it
    assert main(["world", "score", str(later), str(latest), "--edit-types", "background", "--per-type", "2",
                 "--sampling-steps", "1", "--curve", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.count("already in") == 1
    points = json.loads((tmp_path / "c" / "curve.json").read_text())["points"]
    assert [p["step"] for p in points] == [0, 10, 20] and points[2]["scores"] == points[0]["scores"]
    from world.curve import write_curve  # a rerun keeps the earlier commands, once each, its own last

    saved = json.loads((tmp_path / "c" / "curve.json").read_text())
    for command in ("npedit world score B", "npedit world score B"):
        write_curve(points, tmp_path / "c", settings=saved["settings"], command=command)
    commands = json.loads((tmp_path / "c" / "curve.json").read_text())["command"]
    assert commands == f"{saved['command']} ; npedit world score B"
    with pytest.raises(SystemExit, match="was scored with"):
        main(["world", "score", str(latest), "--edit-types", "background", "--per-type", "3", "--sampling-steps", "1",
              "--curve", str(tmp_path / "c")])
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "curve.json").write_text("{truncated")
    with pytest.raises(SystemExit, match="is not a curve written by"):
        main(["world", "score", str(later), "--sampling-steps", "1", "--curve", str(tmp_path / "e")])
    with pytest.raises(SystemExit, match="two editors at step 0"):
        main(["world", "score", str(PRETRAINED / "teacher"), str(PRETRAINED / "teacher"), "--edit-types", "background",
              "--per-type", "1", "--sampling-steps", "1", "--curve", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="one --sampling-steps"):
        main(["world", "score", str(later), "--sampling-steps", "1", "2", "--curve", str(tmp_path / "d")])


def test_world_curves_overlays_runs_scored_alike_and_refuses_the_rest(tmp_path, capsys):
    from npedit.cli import main
    from world.curve import write_curve

    def point(step, success):
        mean = {"success": success, "applied": 2 * success, "realism": 0.5, "preservation_db": 28.0, "n": 16}
        return {"step": step, "editor": f"run/step-{step}/generator", "scores": {"background": mean, "mean": mean}}

    settings = {"per_type": 2, "edit_types": ["background"], "sampling_steps": 4, "seed": 0}
    write_curve([point(0, 0.0), point(500, 0.25)], tmp_path / "seed0", settings=settings)
    write_curve([point(0, 0.0), point(500, 0.125)], tmp_path / "seed1", settings=settings)
    png = tmp_path / "both.png"
    assert main(["world", "curves", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--out", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "seed0: step 500, success 25.0%, edit made 50.0%" in printed and "seed1: step 500, success 12.5%" in printed
    assert png.stat().st_size > 0
    write_curve([point(0, 0.0)], tmp_path / "other", settings={**settings, "sampling_steps": 8})
    with pytest.raises(SystemExit, match="other was scored with .* not comparable"):
        main(["world", "curves", str(tmp_path / "seed0"), str(tmp_path / "other"), "--out", str(png)])
    with pytest.raises(SystemExit, match="does not exist: write it with"):
        main(["world", "curves", str(tmp_path / "seed0"), str(tmp_path / "missing"), "--out", str(png)])
    with pytest.raises(SystemExit, match="1 labels for 2 curves"):
        main(["world", "curves", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--labels", "a", "--out", str(png)])
    with pytest.raises(SystemExit, match="labelled alike"):
        main(["world", "curves", str(tmp_path / "seed0"), str(tmp_path / "seed0"), "--out", str(png)])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "curve.json").write_text("[]")
    with pytest.raises(SystemExit, match="is not a curve written by"):
        main(["world", "curves", str(tmp_path / "bad"), "--out", str(png)])


def test_critic_table_adds_the_wrong_object_columns_where_measured():
    from world.report import critic_table

    quality = {"per_kind": {"remove/edit": 1.0, "remove/identity": 0.5}}
    assert critic_table(quality)[0] == "| edit type | edit question | identity question |"
    rows = critic_table({**quality, "wrong_object": {"per_kind": {"remove/edit": 0.25}}})
    assert rows[0].count("another object") == 2 and "| remove | 100% | 50% | 25% | n/a |" in rows
