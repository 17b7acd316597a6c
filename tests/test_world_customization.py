"""The world's customization cases and their verifier: rendered targets pass, the reference (a copy) and noise fail."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from world import PRETRAINED
from world.customization import held_out_customizations, score_customization, score_customizer
from world.report import customization_table
from world.scene import render


def test_rendered_targets_succeed_and_copies_or_noise_fail():
    cases = held_out_customizations(40)
    assert len({c.instruction for c in cases}) == 40 and held_out_customizations(40) == cases
    on_target = [score_customization(c, render(c.target)) for c in cases]
    assert all(s.success and s.identity and s.scene and not s.copy for s in on_target)
    copies = [score_customization(c, render(c.reference)) for c in cases]
    assert all(s.copy and s.identity and not s.scene and not s.success for s in copies)
    other = [replace(c.target, objects=(replace(c.target.objects[0], shape=next(
        s for s in ("circle", "square") if s != c.target.objects[0].shape)),)) for c in cases]
    wrong_object = [score_customization(c, render(o)) for c, o in zip(cases, other)]
    assert all(s.scene and not s.identity and not s.success for s in wrong_object)  # the new scene, another object
    rng = np.random.default_rng(0)
    noise = [score_customization(c, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for c in cases]
    assert not any(s.success or s.copy for s in noise)


def test_an_editor_is_scored_with_a_grid_and_the_report_shows_the_table(tmp_path):
    from training.backbones import ZImageBackbone

    editor = ZImageBackbone.from_pretrained(PRETRAINED / "teacher")
    scores = score_customizer(editor, held_out_customizations(3), grid=tmp_path / "grid.png")
    assert scores["n"] == 3 and set(scores) == {"success", "identity", "scene", "copy", "realism", "n"}
    assert all(0 <= scores[k] <= 1 for k in ("success", "identity", "scene", "copy", "realism"))
    assert (tmp_path / "grid.png").exists()
    table = customization_table({"np_edit": [{"customization": scores}, {"customization": scores}], "teacher": [{}]})
    assert table[3] == "| variant | success | identity | scene | copy | realism |"
    assert table[-1].startswith("| np_edit | ") and len(table) == 6
