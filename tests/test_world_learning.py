"""The learning test: NP-Edit, trained by the project's own trainer from the committed world models on a world corpus
the real builder made, with no edit pairs, lifts the classical verifier's scores well above the untrained
(teacher-initialised) editor's, for both of the paper's tasks in one run: half the samples background edits, half
customization (the object of an object-centric corpus image put into the scene one of its background prompts names).

The background edit is the type this CI budget teaches (`docs/world_experiment/findings.md`, with the command that
measures every type). A run that stops learning (a broken loss sign, a critic that no longer reaches the generator, a
teacher that no longer loads, customization samples that no longer reach the trainer) leaves the editor where the
teacher is: the background edit not made, the reference's object drawn wrong as often as before.
"""

from __future__ import annotations

import pytest

from world import PRETRAINED
from world.corpus import build_world_corpus
from world.experiment import Experiment, run_experiment

STEPS = 100
CASES = 24
# 3x the world_cpu recipe's rate: a short run's setting. Measured in 3 runs (findings.md, section 5), untrained ->
# trained, of 24 held-out cases each: background edit made 4 -> 42-50 %; customization new scene right 42 -> 67-83 %,
# object kept 25-29 -> 25-50 %, success 0 -> 8-21 %. The object kept is the noisiest: a run on 2 threads instead of 1
# moved it from 50 % to 25 %, so the test asks only that it not fall.
FAST = {"optim.lr": 3e-4, "optim.fake_lr": 3e-4, "data.customization_fraction": 0.5}


@pytest.mark.slow
def test_np_edit_learns_the_background_edit_and_customization_from_the_committed_world_models(tmp_path):
    build_world_corpus(tmp_path / "corpus", 48, on_event=lambda message: None)
    experiment = Experiment(out=tmp_path / "experiment", models=PRETRAINED, corpus=tmp_path / "corpus", steps=STEPS,
                            variants=("teacher", "np_edit"), seeds=(0,), per_type=CASES, edit_types=("background",),
                            customization=CASES, overrides=FAST)
    runs = {run["variant"]: run for run in run_experiment(experiment, log=lambda message: None)["runs"]}
    before, after = (runs[v]["scores"]["background"] for v in ("teacher", "np_edit"))
    assert before["n"] == after["n"] == CASES
    assert before["applied"] <= 0.1 and before["success"] <= 0.05  # the untrained editor keeps the old background
    assert after["applied"] >= 0.25, after  # the background has the named colour in over a quarter of held-out edits

    placed_before, placed_after = (runs[v]["customization"] for v in ("teacher", "np_edit"))
    assert placed_before["n"] == placed_after["n"] == CASES
    assert placed_after["scene"] >= placed_before["scene"] + 0.2, (placed_before, placed_after)  # the new scene
    # the object kept as often as untrained, give or take one case (a critic never taught customization's identity
    # question let it fall from 21 % to 8 %)
    assert placed_after["identity"] >= placed_before["identity"] - 1 / CASES, (placed_before, placed_after)
    assert placed_after["copy"] <= 0.05 and placed_after["success"] > placed_before["success"], placed_after
