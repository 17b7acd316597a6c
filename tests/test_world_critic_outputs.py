"""Critic questions about editors' outputs: the verifier's answers on hand-made outputs, the balanced accuracy on a
hand-computed case, and the `critic_outputs` stage and `probe-critic` command on the committed teacher as an editor."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from world import PRETRAINED
from world.critic_outputs import balanced_accuracy, output_questions
from world.edits import random_edit
from world.scene import COLOURS, render


def answers(edit, output) -> dict[str, str]:
    return {q.kind.split("/")[1]: q.answer for q in output_questions(edit, np.asarray(output, np.float32))}


@pytest.mark.parametrize("edit_type", ["local_color_change", "replace", "background", "style", "insertion"])
def test_the_verifier_answers_the_trainers_questions_about_an_output(edit_type):
    edit = random_edit(random.Random(3), edit_type)
    assert answers(edit, render(edit.target)) == {"edit": "Yes", "identity": "Yes"}
    assert answers(edit, render(edit.source)) == {"edit": "No", "identity": "Yes"}  # nothing done, nothing else lost
    noise = np.random.default_rng(0).uniform(0, 255, (64, 64, 3))
    assert answers(edit, noise) == {"edit": "No", "identity": "No"}


def test_a_removal_is_asked_whether_the_object_is_still_there():
    edit = random_edit(random.Random(4), "remove")
    assert answers(edit, render(edit.target)) == {"edit": "No", "identity": "Yes"}
    assert answers(edit, render(edit.source)) == {"edit": "Yes", "identity": "Yes"}


def test_the_identity_question_fails_when_something_else_changed():
    edit = random_edit(random.Random(5), "local_color_change")
    taken = {edit.target.background, *(o.colour for o in edit.target.objects)}
    changed = render(replace(edit.target, background=next(c for c in COLOURS if c not in taken)))
    assert answers(edit, changed) == {"edit": "Yes", "identity": "No"}


def test_a_blurred_but_made_edit_was_carried_out_yet_changed_the_rest():
    from scipy import ndimage

    from world.score import score_edit

    blurred = 0
    for seed in range(10):
        edit = random_edit(random.Random(seed), "background")
        image = ndimage.gaussian_filter(np.asarray(render(edit.target), np.float32), (1.6, 1.6, 0))
        verdict = score_edit(edit, image)
        if verdict.applied and not verdict.realism:
            blurred += 1
            assert answers(edit, image) == {"edit": "Yes", "identity": "No"}
    assert blurred >= 3


def test_balanced_accuracy_weighs_yes_and_no_alike():
    from world.questions import LabelledQuestion

    edit = random_edit(random.Random(0), "style")
    q = lambda kind, answer: LabelledQuestion(kind, (), "", answer, edit)  # noqa: E731
    right = [(q("a", "Yes"), True), (q("a", "Yes"), False)] + [(q("a", "No"), True)] * 4 + [(q("b", "No"), False)]
    found = balanced_accuracy(right)
    assert found["per_kind"] == {"a": 0.75, "b": 0.0} and found["accuracy"] == 0.375 and found["weakest"] == 0.0
    assert found["yes_share"]["a"] == pytest.approx(2 / 6) and found["n"] == 7
    assert found["false_yes"] == {"a": 0.0, "b": 1.0}  # kinds with a No question only


@pytest.mark.slow
def test_the_critic_continues_on_an_editors_outputs_and_records_it(tmp_path, capsys):
    from npedit.cli import main
    from world.critic_outputs import finetune_on_outputs

    shutil.copytree(PRETRAINED / "critic", tmp_path / "critic")
    from safetensors.torch import load_file

    weights = lambda: load_file(next((tmp_path / "critic").glob("*.safetensors")))  # noqa: E731
    old = weights()
    manifest = finetune_on_outputs(tmp_path, [PRETRAINED / "teacher"], minutes=5, max_steps=2, per_type=1,
                                   held_out_per_type=1, batch_size=4, eval_per_kind=1, progress=False)
    phase = manifest["outputs_finetune"]
    assert phase["steps"] == 2 and phase["questions"] == 16  # 8 edit types x 1 edit x 2 questions
    assert phase["editors"] == [str(PRETRAINED / "teacher")] and 0 <= phase["yes_share"] <= 1
    assert set(phase["before"]["per_kind"]) == set(manifest["quality"]["editor_outputs"]["per_kind"])
    assert manifest["finetune"] == json.loads((PRETRAINED / "critic" / "manifest.json").read_text())["finetune"]
    new = weights()
    assert any(not torch.equal(old[k], new[k]) for k in old)

    shutil.copytree(PRETRAINED / "teacher", tmp_path / "second")
    assert main(["world", "probe-critic", "--models", str(tmp_path), "--editors", str(PRETRAINED / "teacher"),
                 str(tmp_path / "second"), "--per-type", "1"]) == 0
    printed = capsys.readouterr().out
    assert "balanced accuracy" in printed and "local_color_change/edit" in printed
    assert "all editors pooled, held-out edits: balanced accuracy" in printed and "over 32 questions" in printed
    assert "a failing output passed in" in printed
    with pytest.raises(SystemExit, match="critic_outputs needs editors"):
        main(["world", "build", "--out", str(tmp_path), "--models", "critic_outputs", "--minutes", "1"])
    with pytest.raises(SystemExit, match=r"not an editor checkpoint \(no model_index.json\): .*nowhere"):
        main(["world", "build", "--out", str(tmp_path), "--models", "critic_outputs", "--minutes", "1",
              "--editors", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match=r"not an editor checkpoint .*critic$"):
        main(["world", "probe-critic", "--models", str(tmp_path), "--editors", str(tmp_path / "critic")])
    with pytest.raises(SystemExit, match="no critic in"):
        main(["world", "probe-critic", "--models", str(tmp_path / "empty"), "--editors", str(PRETRAINED / "teacher")])
