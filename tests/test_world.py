"""The proof world: scenes render and caption faithfully, edits change only their mask, and the classical verifier
is validated (success on rendered targets, not on the unedited reference, never on noise)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from schemas.edit_types import EDIT_TYPES
from world.edits import make_invalid_edit, random_edit
from world.scene import (Scene, WorldObject, caption, object_centric_scene, parse_caption, random_scene,
                         render)
from world.score import score_edit
from world.verify import matches_scene, parse_image, shape_rates


def test_captions_in_every_phrasing_parse_back_to_their_scene():
    rng = random.Random(0)
    for i in range(60):
        scene = random_scene(rng)
        for phrasing in range(3):
            assert parse_caption(caption(scene, phrasing)).key() == scene.key()
    with pytest.raises(ValueError, match="not a world caption"):
        parse_caption("a cat on a sofa")


@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_an_edit_changes_only_its_mask_and_its_caption_names_the_target(edit_type):
    rng = random.Random(EDIT_TYPES.index(edit_type))
    for _ in range(12):
        edit = random_edit(rng, edit_type)
        before, after = (np.asarray(render(s), np.int16) for s in (edit.source, edit.target))
        changed = (before != after).any(axis=-1)
        assert changed.any(), edit.instruction
        assert not (changed & ~edit.mask()).any(), edit.instruction
        assert parse_caption(edit.edited_caption).key() == edit.target.key()


def test_the_parser_reads_rendered_scenes_back():
    rng = random.Random(1)
    scenes = [random_scene(rng) for _ in range(300)] + [object_centric_scene(rng) for _ in range(30)]
    matched = sum(matches_scene(parse_image(render(s)), s) for s in scenes)
    assert matched / len(scenes) >= 0.99, matched


def test_shape_rates_count_each_object_s_shape_in_its_cell_per_size():
    small_square, large_triangle = WorldObject("square", "red", 0, size="small"), WorldObject("triangle", "blue", 8)
    scene = Scene("white", (small_square, large_triangle))
    blurred = Scene("white", (WorldObject("circle", "red", 0, size="small"), large_triangle))  # the teacher's habit
    moved = Scene("white", (WorldObject("square", "red", 1, size="small"), large_triangle))
    pairs = [(parse_image(render(s)), scene) for s in (scene, blurred, moved)]
    assert shape_rates(pairs) == {"small_shape_match": 1 / 3, "large_shape_match": 1.0}


def test_the_verifier_passes_targets_fails_references_and_noise():
    rng = random.Random(2)
    noise = np.random.default_rng(0)
    counts = {"target": 0, "reference": 0, "noise": 0, "blank": 0, "preserved": 0, "applied": 0, "applied_ref": 0}
    edits = [random_edit(rng, t) for t in EDIT_TYPES for _ in range(25)]
    for edit in edits:
        on_target = score_edit(edit, render(edit.target))
        counts["target"] += on_target.success
        counts["applied"] += on_target.applied
        counts["applied_ref"] += score_edit(edit, render(edit.source)).applied
        undefined = edit.edit_type == "style"  # its mask is the whole image
        assert np.isnan(on_target.preservation_db) == undefined
        counts["preserved"] += (undefined or on_target.preservation_db >= 99) and on_target.untouched_objects_kept
        counts["reference"] += score_edit(edit, render(edit.source)).success
        counts["noise"] += score_edit(edit, noise.integers(0, 256, (64, 64, 3))).success
        counts["blank"] += score_edit(edit, np.full((64, 64, 3), 128)).success
    n = len(edits)
    assert counts["target"] >= 0.99 * n and counts["preserved"] >= 0.99 * n, counts
    assert counts["applied"] >= 0.99 * n and counts["applied_ref"] <= 0.01 * n, counts
    assert counts["reference"] <= 0.01 * n and counts["noise"] == 0 and counts["blank"] == 0, counts
    assert not score_edit(edits[0], noise.integers(0, 256, (64, 64, 3))).realism
    background = next(e for e in edits if e.edit_type == "background")
    smudged = np.array(render(background.target))
    smudged[16:40, 16:40] = noise.integers(0, 256, (24, 24, 3))  # the new background, with pixels no scene explains
    verdict = score_edit(background, smudged)
    assert verdict.applied and not verdict.realism and not verdict.success  # edit made, but no world scene


def test_invalid_edits_change_nothing_and_say_why():
    rng = random.Random(3)
    reasons = set()
    for _ in range(40):
        edit = make_invalid_edit(random_scene(rng), rng)
        assert not edit.valid and edit.target == edit.source and edit.edited_caption is None
        reasons.add(edit.reason)
    assert reasons == {"the object is not in the image", "the edit changes nothing"}


@pytest.mark.parametrize("build, message", [
    (lambda: Scene("red", ()), "a scene holds 1 to 3 objects"),
    (lambda: Scene("teal", (WorldObject("circle", "red", 0),)), "unknown colour 'teal'"),
    (lambda: Scene("blue", (WorldObject("hexagon", "red", 0),)), "unknown shape 'hexagon'"),
    (lambda: Scene("red", (WorldObject("circle", "red", 0),)), "an object has the background's colour"),
    (lambda: Scene("blue", (WorldObject("circle", "red", 0), WorldObject("square", "red", 1))), "share a colour"),
    (lambda: Scene("blue", (WorldObject("circle", "red", 9),)), "unknown cell 9"),
    (lambda: Scene("blue", (WorldObject("circle", "red", 0),), size=50), "multiple of 16"),
])
def test_a_scene_that_cannot_be_rendered_is_a_one_line_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_the_preview_command_writes_a_grid(tmp_path, capsys):
    from npedit.cli import main as npedit

    assert npedit(["world", "preview", "--out", str(tmp_path), "--per-type", "1"]) == 0
    assert (tmp_path / "world_edits.png").exists()
    assert "remove               verifier success on rendered targets 1/1" in capsys.readouterr().out


def test_the_world_vae_trains_resumes_and_loads(tmp_path):
    from world.vae import evaluate, load_vae, train_vae

    first = train_vae(tmp_path, minutes=10, max_steps=40, batch_size=8, eval_every_s=1e9, eval_scenes=16,
                      progress=False)
    assert first["steps"] == 40
    assert first["loss_this_run"]["last_10"] < 0.8 * first["loss_this_run"]["first_10"]
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    resumed = train_vae(tmp_path, minutes=10, max_steps=45, batch_size=8, eval_every_s=1e9, eval_scenes=16,
                        progress=False)
    assert resumed["steps"] == 45 and resumed["loss_this_run"]["steps"] == 5
    again = train_vae(tmp_path, minutes=10, max_steps=45, batch_size=8, eval_every_s=1e9, eval_scenes=16,
                      progress=False)
    assert again["steps"] == 45 and again["loss_this_run"] == {"steps": 0, "first_10": None, "last_10": None}
    vae = load_vae(tmp_path / "vae")
    assert vae.dtype.is_floating_point and vae.config.latent_channels == 16
    assert set(evaluate(vae, 8)) == {"psnr_db", "parse_rate", "small_shape_match", "large_shape_match", "n"}


def test_the_world_teacher_trains_and_loads_as_a_z_image_checkpoint(tmp_path, monkeypatch):
    import world.teacher
    from training.backbones import ZImageBackbone
    from world.teacher import anneal_teacher, draw_beside_references, focus_small_objects, train_teacher
    from world.vae import train_vae

    train_vae(tmp_path, minutes=10, max_steps=2, batch_size=4, eval_scenes=4, progress=False)
    manifest = train_teacher(tmp_path, tmp_path / "vae", minutes=10, max_steps=30, batch_size=8, eval_every_s=1e9,
                             eval_samples=4, progress=False)
    assert manifest["loss_this_run"]["last_10"] < manifest["loss_this_run"]["first_10"]
    teacher = ZImageBackbone.from_pretrained(tmp_path / "teacher")
    assert (teacher.latent_channels, teacher.spatial_factor) == (16, 8)  # the world VAE: 4x down, 16 channels
    assert teacher.tokenizer.tokenize("a large red striped circle") == ["a", "Ġlarge", "Ġred", "Ġstriped", "Ġcircle"]
    assert set(manifest["quality"]) >= {"caption_match", "layout_match"}
    before = teacher.transformer.state_dict()
    annealed = anneal_teacher(tmp_path, minutes=10, max_steps=4, batch_size=4, eval_samples=2, progress=False)
    assert annealed["steps"] == 30 and annealed["anneal"]["steps"] == 4  # the first phase's record stays
    after = ZImageBackbone.from_pretrained(tmp_path / "teacher").transformer.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    focused = focus_small_objects(tmp_path, minutes=10, max_steps=2, batch_size=4, eval_samples=2, progress=False)
    assert focused["anneal"]["steps"] == 4 and focused["small_objects"]["steps"] == 2
    assert focused["small_objects"]["weight"] == 8.0
    final = ZImageBackbone.from_pretrained(tmp_path / "teacher").transformer.state_dict()
    assert any(not torch.equal(after[k], final[k]) for k in after)
    measured, fit = [], world.teacher._continue_teacher
    evaluate_beside = world.teacher.evaluate_beside_reference
    monkeypatch.setattr(world.teacher, "evaluate_beside_reference",
                        lambda *a, **k: measured.append(evaluate_beside(*a, **k)) or measured[-1])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(world.teacher, "_continue_teacher", killed)
    with pytest.raises(KeyboardInterrupt):  # killed after measuring the teacher before
        draw_beside_references(tmp_path, minutes=10, max_steps=2, batch_size=4, share=1.0, eval_samples=2,
                               progress=False)
    monkeypatch.setattr(world.teacher, "_continue_teacher", fit)
    beside = draw_beside_references(tmp_path, minutes=10, max_steps=2, batch_size=4, share=1.0, eval_samples=2,
                                    progress=False)
    assert len(measured) == 2 and beside["beside"]["beside_reference_before"] == measured[0]  # resumed, not re-measured
    assert not (tmp_path / "teacher_beside_before.json").exists()
    assert beside["small_objects"]["steps"] == 2 and beside["beside"]["steps"] == 2 and beside["beside"]["share"] == 1
    assert beside["beside"]["beside_reference"]["n"] == beside["beside"]["beside_reference_before"]["n"] == 2
    assert json.loads((tmp_path / "teacher" / "manifest.json").read_text())["beside"] == beside["beside"]
    moved = ZImageBackbone.from_pretrained(tmp_path / "teacher").transformer.state_dict()
    assert any(not torch.equal(final[k], moved[k]) for k in final)
    with pytest.raises(ValueError, match=r"in \(0, 1\], not 0"):
        draw_beside_references(tmp_path, minutes=10, max_steps=2, share=0.0, progress=False)


def test_a_teacher_drawn_beside_a_reference_reads_it_into_its_loss():
    from training.backbones import ZImageBackbone
    from world import PRETRAINED
    from world.teacher import flow_matching_batch_loss

    teacher = ZImageBackbone.from_pretrained(PRETRAINED / "teacher")
    rng = random.Random(0)
    scenes = [random_scene(rng) for _ in range(3)]
    captions = [caption(s, 0) for s in scenes]
    losses = []
    for beside in (None, [random_scene(rng) for _ in scenes], [random_scene(rng) for _ in scenes]):
        torch.manual_seed(0)
        with torch.no_grad():
            losses.append(flow_matching_batch_loss(teacher, scenes, captions, beside=beside).item())
    assert len(set(losses)) == 3  # the same noise and times: the omni layout and each reference change the loss


def test_a_teacher_with_one_latent_pixel_per_token_trains_edits_and_refuses_to_resume_as_another(tmp_path):
    import shutil

    from npedit.cli import main
    from training.backbones import ZImageBackbone
    from world import PRETRAINED
    from world.evaluate import held_out_edits, score_editor
    from world.teacher import train_teacher

    shutil.copytree(PRETRAINED / "vae", tmp_path / "vae")
    manifest = train_teacher(tmp_path, tmp_path / "vae", minutes=10, max_steps=3, batch_size=4, eval_every_s=1e9,
                             eval_samples=2, patch_size=1, progress=False)
    assert manifest["transformer"]["all_patch_size"] == [1]
    teacher = ZImageBackbone.from_pretrained(tmp_path / "teacher")
    assert (teacher.patch_size, teacher.spatial_factor) == (1, 4)  # a token per 4x4 world pixels
    scores = score_editor(teacher, held_out_edits(1, edit_types=["insertion"]), num_steps=1)  # the editing path
    assert scores["insertion"]["n"] == 1
    with pytest.raises(SystemExit, match="resumes another transformer .*: continue it with the settings"):
        main(["world", "build", "--out", str(tmp_path), "--models", "teacher", "--minutes", "1", "--threads", "1"])


def test_scenes_drawn_by_render_workers_train_the_same_teacher_and_only_the_teacher_moves_device(tmp_path):
    import shutil

    from npedit.cli import main
    from world import PRETRAINED
    from world.teacher import train_teacher

    weights = {}
    for workers in (0, 2):
        out = tmp_path / f"workers{workers}"
        shutil.copytree(PRETRAINED / "vae", out / "vae")
        manifest = train_teacher(out, out / "vae", minutes=10, max_steps=2, batch_size=4, eval_every_s=1e9,
                                 eval_samples=1, render_workers=workers, progress=False)
        assert manifest["device"] == "cpu"
        weights[workers] = torch.load(out / "teacher_train_state.pt", weights_only=False)["transformer"]
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # the same scenes, the same steps
    with pytest.raises(SystemExit, match=r"--device moves only the teacher's stages .*; build critic on the CPU"):
        main(["world", "build", "--out", str(tmp_path), "--models", "teacher", "critic", "--device", "cuda:0"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA device here"):
            main(["world", "build", "--out", str(tmp_path), "--models", "teacher", "--device", "cuda"])


def test_the_small_object_loss_weights_the_latent_pixels_a_small_object_touches():
    from training.losses import flow_matching_loss
    from world.scene import Scene, WorldObject
    from world.teacher import small_object_weights, weighted_flow_matching_loss

    small = Scene("white", (WorldObject("square", "red", 0, size="small"),))
    large = Scene("white", (WorldObject("square", "red", 0, size="large"),))
    weights = small_object_weights([small, large], latent_size=16, weight=8.0)
    assert weights.shape == (2, 1, 16, 16) and torch.all(weights[1] == 1)  # a large object is not weighted
    assert set(weights[0].unique().tolist()) == {1.0, 9.0}
    assert weights[0, 0, :6, :6].eq(9).any() and weights[0, 0, 8:, 8:].eq(1).all()  # in its cell, top left only
    v, x0, eps = torch.randn(2, 16, 16, 16), torch.randn(2, 16, 16, 16), torch.randn(2, 16, 16, 16)
    assert torch.allclose(weighted_flow_matching_loss(v, x0, eps, torch.ones(2, 1, 16, 16)),
                          flow_matching_loss(v, x0, eps))
    error = torch.zeros(1, 16, 16, 16)
    error[..., 0, 0] = 1.0  # unit error on one latent pixel of weight 9 among 255 others of weight 1 (hand case)
    w = torch.ones(1, 1, 16, 16)
    w[..., 0, 0] = 9.0
    assert weighted_flow_matching_loss(error, torch.zeros_like(error), torch.zeros_like(error), w).item() == \
        pytest.approx(9 / (9 + 255))


def test_a_budgeted_runs_rate_warms_up_then_holds_or_anneals_to_zero(tmp_path):
    from world.budget import BudgetedRun

    layer = torch.nn.Linear(2, 2)
    run = BudgetedRun(tmp_path / "state.pt", {"layer": layer}, torch.optim.SGD(layer.parameters(), lr=1.0),
                      random.Random(0), minutes=1e6, max_steps=1000, progress=False)
    rates = {}
    for step in (0, 49, 500, 999, 1000):
        run.step = step
        rates[step] = (run.rate(1.0, anneal=False), run.rate(1.0, anneal=True))
    assert rates[0] == pytest.approx((0.01, 0.01), rel=1e-3) and rates[49][0] == pytest.approx(0.5)
    assert rates[500] == pytest.approx((1.0, 0.5), abs=1e-3)  # half the step budget: cosine at its midpoint
    assert rates[999][1] < 1e-4 and rates[1000] == (1.0, 0.0)


def test_a_budgeted_runs_minutes_are_its_whole_budget_so_a_killed_annealed_run_resumes_its_schedule(tmp_path,
                                                                                                     monkeypatch):
    import types

    import world.budget
    from world.budget import BudgetedRun

    clock = [0.0]
    monkeypatch.setattr(world.budget, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    def train(path, minutes, kill_after=None):
        """The annealed rates of the steps run, each step taking 6 s; `kill_after` steps, the process dies."""
        layer = torch.nn.Linear(2, 2)
        run = BudgetedRun(path, {"layer": layer}, torch.optim.SGD(layer.parameters(), lr=1.0), random.Random(0),
                          minutes=minutes, progress=False)
        rates = []
        while run.running() and len(rates) != kill_after:
            rates.append(run.rate(1.0, anneal=True, warmup_steps=1))
            clock[0] += 6.0
            run.after_step(0.0, evaluate=dict)
        if kill_after:
            run.save()
        else:
            run.finish()
        return rates

    straight = train(None, minutes=1)
    assert len(straight) == 10 and straight[0] == 1.0 and 0 < straight[-1] < 0.03
    killed = train(tmp_path / "state.pt", minutes=1, kill_after=4)
    assert killed + train(tmp_path / "state.pt", minutes=1) == pytest.approx(straight)  # the rest, not 10 more
    assert train(tmp_path / "state.pt", minutes=1) == []  # finished: a rerun trains nothing
    longer = train(tmp_path / "state.pt", minutes=2)  # more minutes continue it, the schedule stretched to them
    assert len(longer) == 10 and longer[0] == pytest.approx(0.5) and 0 < longer[-1] < 0.01


def test_a_budgeted_run_resumes_only_its_own_identity_and_without_a_path_saves_nothing(tmp_path):
    from world.budget import BudgetedRun

    def run(path, identity, steps, seed=0):
        torch.manual_seed(seed)
        layer, rng = torch.nn.Linear(2, 2), random.Random(seed)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
        budgeted = BudgetedRun(path, {"layer": layer}, optimizer, rng, max_steps=steps, progress=False,
                               identity=identity)
        while budgeted.running():
            loss = layer(torch.randn(4, 2)).pow(2).mean() + rng.random()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            budgeted.after_step(loss.item(), evaluate=dict)
        budgeted.finish()
        return layer.weight.detach().clone()

    straight = run(None, {"lr": 0.1}, 6)
    assert list(tmp_path.iterdir()) == []
    run(tmp_path / "state.pt", {"lr": 0.1}, 3)
    assert not torch.equal(run(None, {"lr": 0.1}, 6, seed=1), straight)
    resumed = run(tmp_path / "state.pt", {"lr": 0.1}, 6, seed=1)  # the state, not the seed, decides what comes next
    assert torch.equal(resumed, straight)  # 3 + 3 resumed steps are the 6 straight ones
    with pytest.raises(ValueError, match=r"state.pt is another run's state \(\{'lr': 0.1\}, not \{'lr': 0.2\}\)"):
        run(tmp_path / "state.pt", {"lr": 0.2}, 9)


def test_degraded_latents_are_a_fixed_draw_that_leaves_a_share_clean():
    from world.vae import degrade_latents

    latents = torch.randn(64, 16, 4, 4)
    assert torch.equal(degrade_latents(latents, torch.Generator().manual_seed(0), strength=0.0), latents)
    first = degrade_latents(latents, torch.Generator().manual_seed(0))
    assert torch.equal(first, degrade_latents(latents, torch.Generator().manual_seed(0)))
    unchanged = sum(torch.equal(a, b) for a, b in zip(first, latents))
    assert 6 <= unchanged <= 28  # a quarter of the samples on average


def test_the_robust_decoder_phase_keeps_the_encoder_and_resumes(tmp_path):
    from world.vae import decode_with, finetune_decoder, load_vae, train_vae

    train_vae(tmp_path, minutes=10, max_steps=2, batch_size=4, eval_scenes=4, progress=False)
    before = load_vae(tmp_path / "vae")
    finetune_decoder(tmp_path, minutes=10, max_steps=3, batch_size=4, eval_scenes=4, degrade=1.0, progress=False)
    manifest = finetune_decoder(tmp_path, minutes=10, max_steps=5, batch_size=4, eval_scenes=4, degrade=1.0,
                                progress=False)
    assert manifest["decoder_robust"]["steps"] == 5 and manifest["decoder_robust"]["degrade"] == 1.0
    assert "decoder_finetune" not in manifest and 0 <= manifest["quality"]["degraded_parse_rate"] <= 1
    after = load_vae(tmp_path / "vae")
    assert all(torch.equal(a, b) for a, b in zip(before.encoder.state_dict().values(),
                                                 after.encoder.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(before.decoder.state_dict().values(),
                                                     after.decoder.state_dict().values()))

    class Holder:
        vae = before
    holder = Holder()
    decode_with(holder, tmp_path / "vae")
    assert holder.vae is not before and not holder.vae.training
    train_vae(tmp_path / "other", minutes=10, max_steps=1, batch_size=4, eval_scenes=4, seed=1, progress=False)
    with pytest.raises(ValueError, match="another encoder or latent statistics"):
        decode_with(holder, tmp_path / "other" / "vae")


def test_continuing_a_model_that_was_never_built_is_a_one_line_error(tmp_path):
    from npedit.cli import main

    for stage, name in (("vae_decoder", "vae"), ("vae_decoder_robust", "vae"), ("teacher_anneal", "teacher"),
                        ("teacher_beside", "teacher"),
                        ("critic_customization", "critic"), ("critic_anneal", "critic")):
        with pytest.raises(SystemExit, match=f"{stage} continues the {name} in .*: build it first"):
            main(["world", "build", "--out", str(tmp_path), "--models", stage, "--minutes", "1"])



def test_a_region_no_world_colour_explains_is_a_problem_not_a_crash():
    image = np.full((64, 64, 3), 240.0)  # a white background
    image[20:40, 20:40] = (0, 255, 255)  # cyan: labelled blue, but no blend of blue and white explains it
    parsed = parse_image(image)
    assert not parsed.realistic and any("no object explains" in p for p in parsed.problems)
