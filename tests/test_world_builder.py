"""The world's builder VLM: perfect answers pass the builder's parsers and mean the right thing; a tiny training run
lowers the answer loss and writes a checkpoint the builder's transformers backend loads and runs."""

from __future__ import annotations

import json
import random

import pytest
import torch

from datasets_builder.vlm import PROMPTS
from datasets_builder.vlm.prompts import BACKGROUNDS_PER_OBJECT, EDITS_PER_IMAGE
from schemas import EDIT_TYPES, VlmStage
from world.builder_answers import (background_answer, builder_example, is_object_centric, object_answer, object_name,
                                   proposal_fits, propose_answer, validate_answer, validation_edit)
from world.edits import make_edit, make_invalid_edit
from world.scene import Scene, WorldObject, object_centric_scene, parse_caption, random_scene


def test_perfect_answers_parse_and_score_perfectly_while_wrong_ones_score_zero():
    from world.builder_vlm import held_out_examples, score_answers

    examples = held_out_examples(24)
    for example in examples:
        PROMPTS[example.stage].parse(example.answer)
        assert example.prompt == PROMPTS[example.stage].render(**example.fields)
    perfect = score_answers(examples, [e.answer for e in examples])
    assert set(perfect["schema_valid"]) == {s.value for s in VlmStage}
    flat = [v for k, v in perfect.items() if k != "schema_valid"] + list(perfect["schema_valid"].values())
    assert flat == [1.0] * len(flat)  # also: every rate was measured (None would be no example of its kind)
    others = [examples[(i + 1) % len(examples)] for i in range(len(examples))]  # a neighbour's answer, same stage
    shuffled = score_answers(examples, [o.answer for o in others])
    assert shuffled["caption_match"] < 0.2 and shuffled["edited_caption_match"] < 0.2
    assert score_answers(examples, ["{}"] * len(examples))["schema_valid"]["validate"] == 0.0


def test_proposals_are_valid_edits_of_distinct_types_and_the_check_rejects_broken_ones():
    rng = random.Random(1)
    for _ in range(60):
        scene = random_scene(rng)
        edits = json.loads(propose_answer(scene, rng))["edits"]
        types = [e["edit_type"] for e in edits]
        assert len(set(types)) == len(types) == EDITS_PER_IMAGE
        assert types == sorted(types, key=EDIT_TYPES.index)
        assert all(proposal_fits(scene, e["edit_type"], e["instruction"]) for e in edits)
        assert ("insertion" not in types) if len(scene.objects) == 3 else True
        assert ("remove" not in types) if len(scene.objects) == 1 else True
        assert not proposal_fits(scene, "remove", make_invalid_edit(scene, rng).instruction)
    red = WorldObject("circle", "red", 0)
    scene = Scene("blue", (red, WorldObject("square", "green", 4)))
    assert proposal_fits(scene, "local_color_change", "Make the red circle yellow")
    for edit_type, instruction in [("local_color_change", "Make the red square yellow"),  # absent object
                                   ("local_color_change", "Make the red circle green"),  # a taken colour
                                   ("insertion", "Add a white diamond in the center"),  # an occupied cell
                                   ("local_texture", "Make the red circle plain"),  # no change
                                   ("remove", "Make the red circle yellow"),  # not a removal's phrasing
                                   ("background", "Make the background blue")]:
        assert not proposal_fits(scene, edit_type, instruction), instruction


def test_validation_answers_judge_name_the_target_and_caption_the_result():
    rng = random.Random(2)
    for _ in range(40):
        scene = random_scene(rng)
        invalid = json.loads(validate_answer(make_invalid_edit(scene, rng)))
        assert invalid["is_valid"] is False and invalid["edited_caption"] == "" and invalid["target_object"] == ""
        for edit_type in EDIT_TYPES:
            edit = make_edit(scene, edit_type, rng)
            if edit is None:
                continue
            answer = json.loads(validate_answer(edit))
            assert answer["is_valid"] is True
            assert parse_caption(answer["edited_caption"]).key() == edit.target.key()
            assert answer["target_object"] == (edit.target_object or "")
            assert (edit.target_object or "") in answer["reasoning"]
    shares = [validation_edit(random_scene(rng), rng).valid for _ in range(300)]
    assert 0.25 < 1 - sum(shares) / len(shares) < 0.42  # about a third invalid


def test_object_judgements_and_background_captions():
    rng = random.Random(3)
    for _ in range(30):
        scene = object_centric_scene(rng)
        obj = scene.objects[0]
        answer = json.loads(object_answer(scene))
        assert answer["is_object_centric"] is True and answer["object_name"] == object_name(obj)
        captions = json.loads(background_answer(scene, rng))["background_captions"]
        assert len(set(captions)) == len(captions) == BACKGROUNDS_PER_OBJECT
        for text in captions:
            assert object_name(obj) in text
            (placed,) = parse_caption(text).objects
            assert placed.key()[:2] + placed.key()[3:] == obj.key()[:2] + obj.key()[3:]
            assert parse_caption(text).key() != scene.key()
    crowded = Scene("blue", (WorldObject("circle", "red", 4), WorldObject("square", "green", 0)))
    assert json.loads(object_answer(crowded)) == {"is_object_centric": False, "object_name": "",
                                                  "reasoning": "there are two objects"}
    assert not is_object_centric(Scene("blue", (WorldObject("circle", "red", 4, size="small"),)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from world.builder_vlm import train_builder

    out = tmp_path_factory.mktemp("builder")
    manifest = train_builder(out, minutes=5, max_steps=14, batch_size=4, lr=3e-3, warmup_steps=1,
                             final_eval_per_stage=2, eval_max_new_tokens=24, progress=False)
    return out, manifest


def _fixed_examples() -> list:
    rng = random.Random(7)
    return [builder_example(rng, stage) for stage in VlmStage for _ in range(2)]


def test_training_lowers_the_answer_loss_and_masks_the_prompt(trained):
    from model_zoo.qwen_vl import load_vlm
    from world.builder_vlm import answer_loss, chat_prompt, encode
    from world.critic import new_critic

    out, manifest = trained
    start = new_critic(0)  # the seeded initialisation training started from
    examples = _fixed_examples()
    batch, labels = encode(start.processor, examples)
    for row, mask, label, example in zip(batch["input_ids"], batch["attention_mask"], labels, examples):
        tokens = start.processor.tokenizer.decode(row[mask.bool()])
        answer = start.processor.tokenizer.decode(label[label != -100])
        assert answer == example.answer + "<|im_end|>"
        prompt = chat_prompt(start.processor, example)
        assert tokens.replace("<|image_pad|>" * 16, "<|image_pad|>") == prompt + answer
    model, processor = load_vlm(out / "builder")
    with torch.no_grad():
        before, after = answer_loss(start.model, start.processor, examples), answer_loss(model, processor, examples)
    assert float(after) < float(before) - 1.0, (float(before), float(after))
    assert manifest["steps"] == 14 and (out / "builder" / "manifest.json").exists()


def test_the_checkpoint_runs_through_the_builder_backend_and_answers_fit_its_grammar(trained):
    import xgrammar as xgr

    from datasets_builder.vlm.backends import TransformersBackend
    from world.builder_vlm import evaluate_builder, generate_answers

    out, manifest = trained
    quality = manifest["quality"]
    assert quality["n_per_stage"] == 2 and set(quality["schema_valid"]) == {s.value for s in VlmStage}
    assert all(0.0 <= v <= 1.0 for v in quality["schema_valid"].values())
    backend = TransformersBackend(out / "builder")
    examples = _fixed_examples()[:3]
    assert len(generate_answers(backend, examples, max_new_tokens=8)) == 3
    tokenizer = backend.processor.tokenizer
    for example in _fixed_examples():  # a perfect model's greedy tokens are all admitted by the backend's grammar
        matcher = xgr.GrammarMatcher(backend._grammar(PROMPTS[example.stage].schema))
        assert all(matcher.accept_token(t) for t in tokenizer(example.answer, add_special_tokens=False).input_ids)
        assert matcher.accept_token(tokenizer.eos_token_id) and matcher.is_terminated()
    assert "caption_match" in evaluate_builder(out / "builder", 1, max_new_tokens=8)


def test_training_can_start_from_a_saved_checkpoint(trained, tmp_path):
    from world.builder_vlm import train_builder

    out, _ = trained
    manifest = train_builder(tmp_path, minutes=5, max_steps=1, batch_size=2, init_from=out / "builder",
                             final_eval_per_stage=1, eval_max_new_tokens=8, progress=False)
    assert manifest["init_from"] == str(out / "builder") and manifest["steps"] == 1
    assert (tmp_path / "builder" / "model.safetensors").exists()
