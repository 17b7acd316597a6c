"""The supervised baseline checkpoints like the trainer: a killed run continues from its latest checkpoint to the
weights of an uninterrupted one, and a folder holding another run's checkpoints is refused."""

from __future__ import annotations

import random

import pytest
import torch

import world.supervised
from schemas.errors import Refused
from world import PRETRAINED
from world.supervised import _edited_ways, edit_masks, train_supervised

TEACHER = PRETRAINED / "teacher"
SMALL = {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "progress": False}


def _counting_edits(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Count the rendered pairs a run draws; with `fail_at`, die (as a killed process) on that draw."""
    calls, draw = [], world.supervised.random_edit

    def counted(rng, edit_type):
        calls.append(1)
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return draw(rng, edit_type)

    monkeypatch.setattr(world.supervised, "random_edit", counted)
    return calls


def test_killed_supervised_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight, straight_history = train_supervised(TEACHER, tmp_path / "straight", **SMALL)
    _counting_edits(monkeypatch, fail_at=7)  # step 4's first pair: steps 1-3 done, checkpoint at step 2
    with pytest.raises(KeyboardInterrupt):
        train_supervised(TEACHER, tmp_path / "killed", **SMALL)
    drawn = _counting_edits(monkeypatch)
    resumed, history = train_supervised(TEACHER, tmp_path / "killed", **SMALL)
    assert len(drawn) == 4  # steps 3 and 4 only, from the step-2 checkpoint
    assert history == straight_history
    for a, b in zip(resumed.transformer.parameters(), straight.transformer.parameters(), strict=True):
        assert torch.equal(a, b)
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-0000002", "step-0000004"]
    assert (tmp_path / "killed" / "checkpoints" / "step-0000004" / "generator" / "model_index.json").exists()
    with pytest.raises(Refused, match="other settings"):
        train_supervised(TEACHER, tmp_path / "killed", **{**SMALL, "seed": 1})


def test_edit_masks_cover_the_latent_pixels_an_edit_may_change():
    from world.edits import make_edit
    from world.scene import Scene, WorldObject

    scene = Scene("white", (WorldObject("square", "red", 0, size="small"), WorldObject("circle", "blue", 8)))
    rng = random.Random(0)
    recolour = next(e for e in (make_edit(scene, "local_color_change", rng) for _ in range(20))
                    if e.target_object == "the red square")
    masks = edit_masks([recolour, make_edit(scene, "style", rng)], (16, 16))
    assert masks.shape == (2, 1, 16, 16) and set(masks.unique().tolist()) == {0.0, 1.0}
    assert masks[0, 0, :5, :5].any() and not masks[0, 0, 8:, :].any() and not masks[0, 0, :, 8:].any()
    assert masks[1].all()  # a style edit may change every pixel: the weight is uniform, the loss unchanged


def test_experiment_refuses_a_supervised_edit_weight_that_is_not_positive_and_an_identity_share_not_below_1(tmp_path, capsys):
    from npedit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["world", "experiment", "--out", str(tmp_path), "--variants", "supervised", "--steps", "2",
              "--supervised-edit-weight", "0"])
    assert "--supervised-edit-weight must be positive" in str(exit_info.value)
    with pytest.raises(SystemExit, match=r"--supervised-identity-share is in \[0, 1\), got 1.0"):
        main(["world", "experiment", "--out", str(tmp_path), "--variants", "supervised", "--steps", "2",
              "--supervised-identity-share", "1"])


def test_a_group_edits_one_source_several_ways_under_one_noise_and_time(monkeypatch, tmp_path):
    from world.edits import random_edit

    rng = random.Random(0)
    ways = _edited_ways(random_edit(rng, "local_color_change"), 4, rng)
    assert len(ways) == 4 and len({id(w.source) for w in ways}) == 1 and {w.edit_type for w in ways} == {
        "local_color_change"} and len({w.instruction for w in ways}) > 1
    drawn, noise_to = [], world.supervised.noise_to
    monkeypatch.setattr(world.supervised, "noise_to", lambda x0, eps, t: drawn.append((eps, t)) or noise_to(x0, eps, t))
    _, history = train_supervised(TEACHER, tmp_path / "grouped", steps=1, batch_size=4, group=2,
                                  edit_types=("local_color_change",), progress=False)
    (eps, t), = drawn
    assert torch.equal(eps[0], eps[1]) and torch.equal(eps[2], eps[3]) and not torch.equal(eps[1], eps[2])
    assert t[0] == t[1] and t[2] == t[3] and t[1] != t[2]
    assert "loss/supervised" in history[0]
    with pytest.raises(ValueError, match="positive divisor"):
        train_supervised(TEACHER, tmp_path / "bad", steps=1, batch_size=4, group=3)


def test_beside_reference_steps_mix_the_teachers_own_drawing_into_the_editors_training(tmp_path):
    _, history = train_supervised(TEACHER, tmp_path / "beside", steps=6, batch_size=2, beside_share=0.5,
                                  progress=False)
    kinds = {key for row in history for key in row if key.startswith("loss/")}
    assert kinds == {"loss/supervised", "loss/beside_reference"} and all(
        len([k for k in row if k.startswith("loss/")]) == 1 for row in history)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        train_supervised(TEACHER, tmp_path / "bad", steps=1, beside_share=1.0)


def test_identity_share_returns_a_share_of_sources_unchanged_asked_nothing_or_what_changes_nothing(monkeypatch,
                                                                                                    tmp_path):
    seen, masks = [], world.supervised.edit_masks
    monkeypatch.setattr(world.supervised, "edit_masks", lambda edits, size: seen.extend(edits) or masks(edits, size))
    _, history = train_supervised(TEACHER, tmp_path / "identity", steps=4, batch_size=4, identity_share=0.5,
                                  edit_types=("local_color_change",), edit_weight=2.0, progress=False)
    unchanged = [e for e in seen if e.target is e.source]
    assert len(seen) == 16 and 3 <= len(unchanged) <= 13 and all(not e.valid for e in unchanged)
    assert {e.instruction for e in unchanged} & {""} and any(e.instruction for e in unchanged)
    assert all(e.valid and e.target.key() != e.source.key() for e in seen if e not in unchanged)
    assert all(not e.mask().any() for e in unchanged if e.edit_type != "background")
    with pytest.raises(ValueError, match=r"edits returned unchanged is in \[0, 1\)"):
        train_supervised(TEACHER, tmp_path / "bad", steps=1, identity_share=1.0)


def test_whom_pairs_ask_each_change_of_another_object_of_the_same_scene_under_one_noise(monkeypatch, tmp_path):
    from world.edits import random_edit

    rng = random.Random(1)
    edit = next(e for e in (random_edit(rng, "local_color_change") for _ in range(50)) if len(e.source.objects) > 1)
    first, second = _edited_ways(edit, 2, rng, whom=True)
    assert first is edit and second.source is edit.source and second.target_object != edit.target_object
    assert second.instruction == edit.instruction.replace(edit.target_object, second.target_object)
    named, other = edit.source.object_at(edit.cell), edit.source.object_at(second.cell)
    assert second.target.object_at(second.cell).colour == edit.target.object_at(edit.cell).colour != other.colour
    assert second.target.object_at(edit.cell) == named  # the first edit's object is left as it is
    seen, masks = [], world.supervised.edit_masks
    monkeypatch.setattr(world.supervised, "edit_masks", lambda edits, size: seen.extend(edits) or masks(edits, size))
    train_supervised(TEACHER, tmp_path / "whom", steps=2, batch_size=4, group=2, whom_pairs=True, edit_weight=2.0,
                     edit_types=("local_color_change",), progress=False)
    pairs = list(zip(seen[::2], seen[1::2]))
    assert len(pairs) == 4 and all(a.source is b.source for a, b in pairs)
    assert any(a.target_object != b.target_object for a, b in pairs)
    with pytest.raises(ValueError, match="groups of 2"):
        train_supervised(TEACHER, tmp_path / "bad", steps=1, batch_size=4, whom_pairs=True)
