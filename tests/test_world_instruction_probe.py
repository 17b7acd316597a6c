"""The colour-following probe: an oracle that paints the asked colour scores 100 % asked, a copier 100 % kept with no
spread; a real editor runs through it; a bad phrasing gets one line."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from schemas.errors import Refused
from training.backbones import ZImageBackbone
from world import PRETRAINED
from world.edits import random_edit
from world.instruction_probe import (asks, check_phrasing, colour_following, interior_change, keeps_source_colour,
                                    measure, other_object_edit, save_colour_grid)
from world.scene import with_objects
from world.vae import renders


def _large_recolour():
    rng = random.Random(3)
    while True:
        edit = random_edit(rng, "local_color_change")
        if next(o for o in edit.source.objects if o.cell == edit.cell).size == "large":
            return edit


def test_an_oracle_scores_the_asked_colour_and_a_copier_the_source():
    edit = _large_recolour()
    obj = next(o for o in edit.source.objects if o.cell == edit.cell)
    others = [o for o in edit.source.objects if o.cell != edit.cell]
    colours = [c for c, _ in asks(edit)]
    taken = {o.colour for o in edit.source.objects} | {edit.source.background}
    assert colours and len(colours) == 8 - len(taken) and not taken & set(colours)
    k = len(colours)
    painted = renders([with_objects(edit.source, others + [replace(obj, colour=c)]) for c in colours])
    hits, kept, spread, nearest = measure(edit, colours, painted)
    assert (hits, kept) == (k, 0) and spread > 40 and nearest == colours
    hits, kept, spread, nearest = measure(edit, colours, renders([edit.source] * k))
    assert (hits, kept) == (0, k) and spread == pytest.approx(0.0, abs=1e-6) and set(nearest) == {obj.colour}


def test_an_editor_that_reads_whom_its_instruction_names_changes_the_interior_and_keeps_the_other():
    rng = random.Random(5)
    edit = next(e for e in (random_edit(rng, "local_color_change") for _ in range(200))
                if len(e.source.objects) > 1 and next(o for o in e.source.objects if o.cell == e.cell).size == "large")
    obj = next(o for o in edit.source.objects if o.cell == edit.cell)
    other = next(o for o in edit.source.objects if o.name != obj.name)
    colour, _ = asks(edit)[0]
    named_other = other_object_edit(edit)  # the measures read the other's interior when it is the one named
    swapped = named_other.instruction
    assert swapped == edit.instruction.replace(edit.target_object, other.name) and edit.target_object not in swapped
    assert (named_other.target_object, named_other.cell) == (other.name, other.cell)
    rest = [o for o in edit.source.objects if o not in (obj, other)]
    oracle = renders([with_objects(edit.source, rest + [other, replace(obj, colour=colour)]),
                      with_objects(edit.source, rest + [obj, replace(other, colour=colour)])])
    assert interior_change(edit, oracle[0], oracle[1]) > 40  # it recolours the object named, so this one reverts
    assert keeps_source_colour(edit, oracle) == [False, True]  # asked: repainted; another object named: kept
    assert keeps_source_colour(named_other, oracle) == [True, False]
    copies = renders([edit.source] * 2)
    assert interior_change(edit, copies[0], copies[1]) == pytest.approx(0.0, abs=1e-6)
    alone = next(e for e in (random_edit(rng, "local_color_change") for _ in range(200)) if len(e.source.objects) == 1)
    assert other_object_edit(alone) is None


def test_the_probe_runs_a_real_editor_draws_its_grid_and_refuses_bad_phrasings(tmp_path):
    from PIL import Image

    from npedit.cli import main

    teacher = ZImageBackbone.from_pretrained(PRETRAINED / "teacher")
    edit = _large_recolour()
    found = colour_following(teacher, [edit], num_steps=1, grid_rows=2)
    assert found.n == len(asks(edit)) and 0 <= found.asked <= 1 and 0 <= found.kept <= 1 and found.spread >= 0
    assert found.empty > 0  # the teacher draws from its text: an empty instruction changes what it draws
    assert 0 <= found.kept_when_empty <= 1
    assert len(found.shown) == 1 and len(found.shown[0][3]) == found.n
    grid = Image.open(save_colour_grid({"teacher": found, "again": found}, tmp_path / "grid.png"))
    assert grid.size == ((2 + found.n) * 96, 2 * (96 + 14))  # the text, the source and each asked colour; 2 rows
    for bad in ("Make {target} blue", "Make {target} {hue}", "Make {target {colour}"):
        with pytest.raises(Refused):
            check_phrasing(bad)
    assert check_phrasing("Make {target} a {colour} {shape}")
    assert asks(edit, "Make {target} {where} {colour}")[0][1].startswith(f"Make {edit.target_object} ")
    with pytest.raises(SystemExit, match="--grid-rows must be at least 1"):
        main(["world", "probe-instruction", str(PRETRAINED / "teacher"), "--grid", str(tmp_path / "g.png"),
              "--grid-rows", "0"])
    with pytest.raises(SystemExit, match="must name"):
        main(["world", "probe-instruction", str(PRETRAINED / "teacher"), "--phrasing", "Paint it {hue}"])


def test_one_runs_checkpoints_probed_as_a_curve_that_a_rerun_extends_and_other_settings_refuse(tmp_path, capsys):
    import json

    from PIL import Image

    from npedit.cli import main

    def checkpoint(run, step):
        path = tmp_path / run / f"step-{step:07d}" / "generator"
        path.parent.mkdir(parents=True)
        path.symlink_to((PRETRAINED / "teacher").resolve())
        return str(path)

    first, second, other_run = checkpoint("run", 100), checkpoint("run", 200), checkpoint("other", 100)
    curve = tmp_path / "curve"
    assert main(["world", "probe-instruction", second, "--per-type", "2", "--curve", str(curve)]) == 0
    assert main(["world", "probe-instruction", first, second, "--per-type", "2", "--curve", str(curve)]) == 0
    assert f"{second}: already in" in capsys.readouterr().out
    saved = json.loads((curve / "instruction_curve.json").read_text())
    assert [p["step"] for p in saved["points"]] == [100, 200]
    assert saved["points"][0]["scores"] == saved["points"][1]["scores"]  # one model probed alike twice
    assert {"asked", "kept", "spread", "n", "other_object", "empty", "kept_when_empty", "kept_when_other_named",
            "other_painted_when_named"} == set(saved["points"][0]["scores"])
    assert Image.open(curve / "instruction_curve.png").size == (1000, 380)
    with pytest.raises(SystemExit, match="was scored with .* give another --curve folder"):
        main(["world", "probe-instruction", first, "--per-type", "2", "--seed", "1", "--curve", str(curve)])
    with pytest.raises(SystemExit, match="two editors at step 100"):
        main(["world", "probe-instruction", other_run, "--per-type", "2", "--curve", str(curve)])
