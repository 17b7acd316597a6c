"""The supervised baseline checkpoints like the trainer: a killed run continues from its latest checkpoint to the
weights of an uninterrupted one, and a folder holding another run's checkpoints is refused."""

from __future__ import annotations

import pytest
import torch

import world.supervised
from schemas.errors import Refused
from world import PRETRAINED
from world.supervised import train_supervised

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
