"""The learning test: NP-Edit, trained by the project's own trainer from the committed world models on a world corpus
the real builder made, with no edit pairs, lifts the classical verifier's scores on held-out background edits well
above the untrained (teacher-initialised) editor's.

The background edit is the type this CI budget teaches (`docs/world_experiment/findings.md`, with the command that
measures every type): the teacher draws backgrounds right in all of its samples and the critic answers the background
question right in 96 % of held-out cases, while objects, whose shapes the 2M-parameter teacher draws as blobs, need far
longer. A run that stops learning (a broken loss sign, a critic that no longer reaches the generator, a teacher that
no longer loads) leaves the editor where the teacher is: the edit not made, 0 %.
"""

from __future__ import annotations

import pytest

from world import PRETRAINED
from world.corpus import build_world_corpus
from world.experiment import Experiment, run_experiment

STEPS = 100
EDITS = 24
# 3x the world_cpu recipe's rate: a short run's setting. Measured on 2 seeds, 100 steps: the edit made in 42-46 % of
# held-out edits at 3e-4 (29 % at the recipe's 1e-4); success, which also needs a clean world scene, 8-12 %.
FAST = {"optim.lr": 3e-4, "optim.fake_lr": 3e-4}


@pytest.mark.slow
def test_np_edit_learns_the_background_edit_from_the_committed_world_models(tmp_path):
    build_world_corpus(tmp_path / "corpus", 48, on_event=lambda message: None)
    experiment = Experiment(out=tmp_path / "experiment", models=PRETRAINED, corpus=tmp_path / "corpus", steps=STEPS,
                            variants=("teacher", "np_edit"), seeds=(0,), per_type=EDITS, edit_types=("background",),
                            overrides=FAST)
    results = run_experiment(experiment, log=lambda message: None)
    before, after = ({run["variant"]: run["scores"]["background"] for run in results["runs"]}[v]
                     for v in ("teacher", "np_edit"))
    assert before["n"] == after["n"] == EDITS
    assert before["applied"] <= 0.05 and before["success"] <= 0.05  # the untrained editor keeps the old background
    assert after["applied"] >= 0.25, after  # the background has the named colour in over a quarter of held-out edits
