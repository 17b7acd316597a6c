"""The world critic's questions are the trainer's own and their answers are the world's truth (checked by the
verifier, an independent reader of the images); the critic trains through the trainer's read-out and loads by path."""

from __future__ import annotations

import random
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from training.critics import load_critic
from training.customization import customization_questions
from training.questions import questions_for
from world.critic import finetune_critic, new_critic, train_critic, yes_no_loss
from world.critic_objectives import AuxiliaryObjectives, attribute_labels, change_map, dense_labels, target_map
from world.customization import CustomizationCase, score_customization
from world.edits import change_another_object, random_edit
from world.questions import CUSTOMIZATION_KINDS, KINDS, labelled_question, question_set, wrong_object_questions
from world.scene import COLOURS, caption, random_scene, render
from world.verify import parse_image


def test_every_kind_is_a_trainer_question_with_balanced_answers():
    questions = question_set(seed=3, per_kind=6)
    assert Counter(q.kind for q in questions) == {kind: 6 for kind in KINDS}
    assert Counter(q.answer for q in questions) == {"Yes": 48, "No": 48}
    for q in questions:
        asked = {x.text: x for x in questions_for(q.edit.edit_type, q.edit.instruction, q.edit.target_object)}
        assert q.text in asked and asked[q.text].kind == q.kind.split("/")[1]
        assert len(q.images) == len(asked[q.text].images)


def test_answers_agree_with_the_verifier():
    rng = random.Random(7)
    checked = 0
    for kind in KINDS:
        for answer in ("Yes", "No") * 5:
            q = labelled_question(rng, kind, augment=False, answer=answer)
            output = parse_image(q.images[-1])
            target, source = q.edit.target.key(), q.edit.source.key()
            if kind == "remove/edit":  # "Does this image contain X?"
                shape, colour = q.edit.target_object.split()[2], q.edit.target_object.split()[1]
                assert (output.find(shape, colour) is not None) == (answer == "Yes"), q.text
            elif kind.endswith("/edit"):
                assert (output.realistic and output.key() == target) == (answer == "Yes"), (q.text, answer)
            elif answer == "Yes":
                assert output.key() in {target, source}
            else:
                assert not (output.realistic and output.key() in {target, source})
            checked += 1
    assert checked == 160


def test_change_another_object_makes_the_asked_change_to_another_object():
    rng = random.Random(3)
    made = Counter()
    for edit_type in ("replace", "local_texture", "shape_change", "remove", "local_color_change"):
        for _ in range(40):
            edit = random_edit(rng, edit_type)
            output = change_another_object(rng, edit, edit.source)
            if output is None:  # one object alone, or no other that the change would alter and keep distinct
                continue
            named = edit.source.object_at(edit.cell)
            assert output.object_at(edit.cell) == named  # the named object is left as it was
            changed = [o for o in edit.source.objects if o not in output.objects]
            assert len(changed) == 1 and changed[0] is not named
            if edit_type == "remove":
                assert output.object_at(changed[0].cell) is None
            else:
                after = edit.target.object_at(edit.cell)
                assert {a for a in ("shape", "colour", "texture") if getattr(output.object_at(changed[0].cell), a)
                        == getattr(after, a) != getattr(named, a)}, edit.instruction
            parsed = parse_image(render(output))
            made[edit_type] += parsed.realistic and parsed.key() == output.key()
    assert all(made[t] >= 12 for t in ("replace", "shape_change", "remove", "local_color_change")), made
    for edit_type in ("insertion", "style", "background"):
        edit = random_edit(rng, edit_type)
        assert change_another_object(rng, edit, edit.source) is None


def test_wrong_object_questions_have_the_answer_an_editor_should_be_refused():
    questions = wrong_object_questions(seed=2, per_kind=3)
    assert Counter(q.kind for q in questions) == {kind: 3 for kind in KINDS if kind.split("/")[0] not in
                                                  ("insertion", "style", "background")}
    for q in questions:
        output = parse_image(q.images[-1])
        assert output.key() not in {q.edit.source.key(), q.edit.target.key()} or not output.realistic
        assert q.answer == ("Yes" if q.kind == "remove/edit" else "No")  # the named object is still there


def test_customization_kinds_are_the_trainers_questions_with_balanced_answers():
    questions = question_set(seed=3, per_kind=6, kinds=CUSTOMIZATION_KINDS)
    assert Counter(q.kind for q in questions) == {kind: 6 for kind in CUSTOMIZATION_KINDS}
    assert Counter(q.answer for q in questions) == {"Yes": 9, "No": 9}
    for q in questions:
        asked = {x.text: x for phrasing in range(3)
                 for x in customization_questions(q.edit.target_object, caption(q.edit.target, phrasing))}
        assert q.text in asked and asked[q.text].kind == q.kind.split("/")[1]
        assert len(q.images) == len(asked[q.text].images) and q.edit.source.objects[0].cell == 4  # the reference


def test_customization_answers_agree_with_the_verifier():
    rng = random.Random(11)
    for kind in CUSTOMIZATION_KINDS:
        for answer in ("Yes", "No") * 8:
            q = labelled_question(rng, kind, augment=False, answer=answer)
            case = CustomizationCase(q.edit.source, q.edit.target, q.edit.target_object, "")
            score = score_customization(case, q.images[-1])
            said = {"customization/identity": score.identity and score.realism,
                    "customization/edit": score.success, "customization/copy": score.copy}[kind]
            assert said == (answer == "Yes"), (kind, answer, score)


def test_dense_labels_read_colours_and_background():
    scene = random_scene(random.Random(2))  # one small black triangle on a red striped background
    shares, background = dense_labels(np.asarray(render(scene), np.float32))
    assert shares.shape == (64, 8) and background.shape == (64,)
    assert torch.allclose(shares.sum(1), torch.ones(64))
    black, red = list(COLOURS).index("black"), list(COLOURS).index(scene.background)
    assert torch.equal(background, shares[:, red])
    assert 0.2 < float(shares[:, black].max()) < 1.0 and 0.9 < float(background.mean()) < 1.0


def test_change_and_target_maps_point_at_the_edit():
    q = labelled_question(random.Random(4), "local_color_change/edit", augment=False, answer="Yes")
    changed = change_map(q.images[0], q.images[1])
    where = target_map(q)
    assert changed.shape == where.shape == (16,) and changed.sum() >= 1
    assert torch.all(changed <= where)  # a recolouring changes only blocks the recoloured object covers
    assert change_map(q.images[0], q.images[0]).sum() == 0
    assert target_map(labelled_question(random.Random(4), "style/edit", augment=False)) is None


def test_attribute_labels_describe_the_edited_place_in_each_image():
    q = labelled_question(random.Random(6), "local_color_change/edit", augment=False, answer="Yes")
    before, after = attribute_labels(q)
    source, target = q.edit.source.object_at(q.edit.cell), q.edit.target.object_at(q.edit.cell)
    assert before["present"] == after["present"] == 1
    assert list(COLOURS)[before["colour"]] == source.colour and list(COLOURS)[after["colour"]] == target.colour
    assert before["shape"] == after["shape"]
    removal = labelled_question(random.Random(6), "remove/edit", augment=False, answer="No")  # the object is gone
    (shown,) = attribute_labels(removal)
    assert shown["present"] == 0 and shown["colour"] == -100


def test_auxiliary_heads_read_the_critics_hidden_states():
    critic = new_critic(seed=0)
    critic.model.requires_grad_(True).train()
    heads = AuxiliaryObjectives(critic)
    questions = question_set(seed=5, per_kind=1)
    yes_no_loss(critic, questions)
    losses = heads.loss(questions)
    assert set(losses) == {"vision", "change", "target", "attributes"} and all(v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert critic.model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    assert critic.model.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    heads.remove_hooks()


def test_critic_learns_through_the_trainers_readout():
    torch.manual_seed(0)
    critic = new_critic(seed=0)
    critic.model.requires_grad_(True).train()
    questions = question_set(seed=11, per_kind=1)[:8]
    optimizer = torch.optim.Adam(critic.model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss, _ = yes_no_loss(critic, questions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_trained_critic_saves_and_loads_by_path(tmp_path):
    manifest = train_critic(tmp_path, minutes=5, max_steps=3, eval_per_kind=2, progress=False)
    assert manifest["steps"] == 3 and set(manifest["quality"]["per_kind"]) == set(KINDS)
    critic = load_critic(tmp_path / "critic")
    q = question_set(seed=1, per_kind=1)[0]
    yes, no = critic.answer_logits([[torch.from_numpy(p / 127.5 - 1).permute(2, 0, 1).float() for p in q.images]],
                                   [q.text])
    assert torch.isfinite(yes).all() and torch.isfinite(no).all()
    tuned = finetune_critic(tmp_path, minutes=5, max_steps=2, eval_per_kind=1, progress=False)
    assert tuned["steps"] == 3 and tuned["finetune"]["steps"] == 2  # the first phase's record stays
    assert set(tuned["quality"]["per_kind"]) == set(KINDS + CUSTOMIZATION_KINDS)
    assert not torch.equal(load_critic(tmp_path / "critic").model.lm_head.weight, critic.model.lm_head.weight)
    annealed = finetune_critic(tmp_path, minutes=5, max_steps=2, anneal=True, eval_per_kind=1, progress=False)
    assert annealed["finetune"]["steps"] == 2 and annealed["anneal"]["steps"] == 2  # each phase keeps its record
    assert (tmp_path / "critic_anneal_state.pt").exists()
    assert set(annealed["quality"]["wrong_object"]["per_kind"]) == {
        kind for kind in KINDS if kind.split("/")[0] not in ("insertion", "style", "background")}
    again = tmp_path / "again"  # the annealed critic annealed again elsewhere: a second record, resumed as itself
    again.mkdir()
    shutil.copytree(tmp_path / "critic", again / "critic")
    twice = finetune_critic(again, minutes=5, max_steps=1, anneal=True, eval_per_kind=1, progress=False)
    assert twice["anneal"] == annealed["anneal"] and twice["anneal_2"]["steps"] == 1
    resumed = finetune_critic(again, minutes=5, max_steps=2, anneal=True, eval_per_kind=1, progress=False)
    assert resumed["anneal"] == annealed["anneal"] and resumed["anneal_2"]["steps"] == 2 and "anneal_3" not in resumed
