"""Editor-like renders for the critic (`world.critic_robust`): answered by the verifier about the image shown, drawn
with Yes and No alike, and the `critic_robust` stage that continues the committed critic on them."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from world import PRETRAINED
from world.critic_outputs import output_questions
from world.critic_robust import DegradedQuestions, degraded_question_set, editor_like
from world.edits import random_edit
from world.scene import render
from world.vae import load_vae


def test_the_answer_is_the_verifiers_about_the_degraded_image_not_the_render_it_came_from():
    edit = random_edit(random.Random(3), "local_color_change")
    target = np.asarray(render(edit.target), np.float32)
    clean = {q.text: q.answer for q in output_questions(edit, target)}
    smeared = {q.text: q.answer for q in output_questions(edit, ndimage.gaussian_filter(target, (3, 3, 0)))}
    assert set(clean.values()) == {"Yes"}  # the rendered target: edit made, everything else kept
    assert "No" in smeared.values()  # smeared past a clean scene, it no longer keeps everything else


def test_editor_like_images_stay_images_and_vary():
    rng = random.Random(0)
    vae = load_vae(PRETRAINED / "vae").eval()
    images = [editor_like(rng, random_edit(rng), vae) for _ in range(12)]
    assert all(i.shape == (64, 64, 3) and i.min() >= 0 and i.max() <= 255 and np.all(i == i.round()) for i in images)
    edit = random_edit(random.Random(1), "insertion")
    target = np.asarray(render(edit.target), np.float32)
    drawn = [editor_like(random.Random(seed), edit, vae) for seed in range(12)]
    assert sum(np.abs(d - target).mean() > 1 for d in drawn) >= 6  # most are not the clean target


def test_degraded_questions_come_with_both_answers_and_their_own_verifier_answer():
    rng = random.Random(5)
    draw = DegradedQuestions(None, kinds=("shape_change/identity", "background/edit"))
    questions = [draw(rng) for _ in range(40)]
    for kind in draw.kinds:
        answers = [q.answer for q in questions if q.kind == kind]
        assert 0.25 <= answers.count("Yes") / len(answers) <= 0.75, (kind, answers)
    for q in questions[:10]:  # each question keeps the answer the verifier gives for the image it shows
        again = {x.text: x.answer for x in output_questions(q.edit, q.images[-1])}
        assert again[q.text] == q.answer


def test_the_held_out_degraded_set_is_fixed_and_covers_every_editing_kind():
    vae = load_vae(PRETRAINED / "vae").eval()
    first = degraded_question_set(7, 2, vae)
    torch.manual_seed(123)  # the set depends on its seed alone, not on torch's global generator
    second = degraded_question_set(7, 2, vae)
    assert len(first) == 32 and len({q.kind for q in first}) == 16
    assert [q.answer for q in first] == [q.answer for q in second]
    assert all(np.array_equal(a.images[-1], b.images[-1]) for a, b in zip(first, second))


@pytest.mark.slow
def test_the_critic_continues_on_degraded_renders_and_records_it(tmp_path, capsys):
    from safetensors.torch import load_file

    from npedit.cli import main
    from world.critic_robust import finetune_on_degraded

    shutil.copytree(PRETRAINED / "critic", tmp_path / "critic")
    weights = lambda: load_file(next((tmp_path / "critic").glob("*.safetensors")))  # noqa: E731
    old = weights()
    manifest = finetune_on_degraded(tmp_path, PRETRAINED / "vae", minutes=5, max_steps=2, batch_size=4,
                                    eval_per_kind=1, held_out_per_kind=2, progress=False)
    phase = manifest["robust"]
    assert phase["steps"] == 2 and phase["vae"] == str(PRETRAINED / "vae")
    assert set(phase["before"]["per_kind"]) == set(manifest["quality"]["degraded_renders"]["per_kind"])
    assert manifest["anneal"] == json.loads((PRETRAINED / "critic" / "manifest.json").read_text())["anneal"]
    assert (tmp_path / "critic_robust_state.pt").exists()
    new = weights()
    assert any(not torch.equal(old[k], new[k]) for k in old)
    assert main(["world", "models", "--models", str(tmp_path)]) == 0
    assert "degraded_renders_balanced_accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="critic_robust continues the critic in .*: build it first"):
        main(["world", "build", "--out", str(tmp_path / "empty"), "--models", "critic_robust", "--minutes", "1"])
