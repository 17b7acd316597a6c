"""The world oracle answers the builder's prompts with the world's truth, and the real corpus build on world images
served on loopback publishes a snapshot the trainer reads, with every edit type and a validity rate in band."""

from __future__ import annotations

import io
import json
import random

import pytest
from PIL import Image

from datasets_builder import lake
from datasets_builder.vlm import PROMPTS, PromptInput, ResponseCache, VlmRunner
from datasets_builder.vlm.backends import OpenAICompatibleBackend
from datasets_builder.vlm.prompts import ParseError
from odd_images import SAMPLES
from schemas import EDIT_TYPES, VlmStage
from world.builder_answers import INVALID_SHARE, proposal_fits, stored_image, validation_edit
from world.edits import PHRASINGS, make_invalid_edit
from world.oracle import ORACLE_MODEL, WorldOracle, invalid_instruction, judge, read_scene, recognise, serve_oracle
from world.scene import COLOURS, SHAPES, object_centric_scene, parse_caption, random_scene, render


def _read_right(example) -> bool:
    scene, _ = read_scene(example.image_bytes)
    return scene is not None and scene.key() == example.scene.key()


def test_every_builder_prompt_is_recognised_with_its_fields():
    fields = {VlmStage.CAPTION: {}, VlmStage.PROPOSE: {"count": "4"},
              VlmStage.VALIDATE: {"edit_type": "remove", "instruction": 'Remove the red "circle"'},
              VlmStage.OBJECT: {}, VlmStage.BACKGROUND: {"object_name": "a large red circle", "count": "3"}}
    for stage, values in fields.items():
        assert recognise(PROMPTS[stage].render(**values)) == (stage, values)
    assert recognise("Describe this image.") is None
    assert recognise(PROMPTS[VlmStage.CAPTION].render() + " Be brief.") is None


def test_the_oracle_scores_as_the_world_truth_on_the_learned_builders_held_out_examples():
    from world.builder_vlm import held_out_examples, score_answers

    oracle = WorldOracle(invalid_share=0)
    examples = held_out_examples(16)
    answers = [oracle.answer(e.image_bytes, e.prompt) for e in examples]
    read = [(e, a) for e, a in zip(examples, answers) if _read_right(e)]
    assert len(read) >= 0.9 * len(examples)  # the verifier's eyes: a few small shapes are misread after JPEG
    for example, answer in read:
        PROMPTS[example.stage].parse(answer)
    score = score_answers(*zip(*read))
    edited = score.pop("edited_caption_match")  # an insertion's size and texture are the oracle's own draw
    assert edited >= 0.7
    assert set(score.pop("schema_valid").values()) == {1.0}
    assert set(score.values()) == {1.0}, score
    overall = score_answers(examples, answers)
    assert overall["caption_match"] >= 0.8 and overall["validity_agreement"] >= 0.9


def test_validation_agrees_with_the_world_on_valid_and_invalid_instructions():
    rng, oracle = random.Random(3), WorldOracle()
    checked = {True: 0, False: 0}
    for _ in range(40):
        scene = random_scene(rng)
        image = stored_image(render(scene))
        if read_scene(image)[0] is None or read_scene(image)[0].key() != scene.key():
            continue
        for edit in (validation_edit(scene, rng, invalid_share=0), make_invalid_edit(scene, rng)):
            text = oracle.answer(image, PROMPTS[VlmStage.VALIDATE].render(edit_type=edit.edit_type,
                                                                           instruction=edit.instruction))
            answer = PROMPTS[VlmStage.VALIDATE].parse(text)
            assert answer["is_valid"] == edit.valid, (edit, answer)
            checked[edit.valid] += 1
            if edit.valid and edit.edit_type != "insertion":
                assert parse_caption(answer["edited_caption"]).key() == edit.target.key()
            if edit.valid and edit.target_object:
                assert answer["target_object"] == edit.target_object
            if not edit.valid:
                assert answer["edited_caption"] == answer["target_object"] == "" and answer["reasoning"]
    assert min(checked.values()) >= 30


def test_judgements_agree_with_the_worlds_proposal_check():
    rng = random.Random(5)
    words = [*COLOURS, *SHAPES, "pink", "hexagon", "striped", "plain"]
    for _ in range(300):
        scene = object_centric_scene(rng) if rng.random() < 0.3 else random_scene(rng)
        edit_type = rng.choice(EDIT_TYPES)
        if rng.random() < 0.5:
            instruction = invalid_instruction(scene, edit_type, rng) or rng.choice(PHRASINGS[edit_type]).format(
                new="a pink circle", where="at the top")
        else:  # any words in the type's phrasings: mostly invalid, some valid
            obj = rng.choice(scene.objects)
            target = obj.name if rng.random() < 0.6 else f"the {rng.choice(words)} {rng.choice(SHAPES)}"
            instruction = rng.choice(PHRASINGS[edit_type]).format(
                target=target, new=f"a {rng.choice(words)} {rng.choice(words)}", colour=rng.choice(words),
                background=rng.choice(words), shape=rng.choice(words), texture=rng.choice(["striped", "plain"]),
                where=rng.choice(["in the center", "at the top left", "at the middle"]),
                style=rng.choice(["in pastel colours", "in plain bright colours", "in sepia"]))
        assert judge(scene, edit_type, instruction, rng).valid == proposal_fits(scene, edit_type, instruction), \
            (scene, edit_type, instruction)
    assert not judge(scene, "remove", "Paint the whole thing", rng).valid


def test_proposals_mix_invalid_ones_in_at_the_set_share_and_answers_are_deterministic():
    rng, oracle = random.Random(7), WorldOracle()
    prompt = PROMPTS[VlmStage.PROPOSE].render(count=4)
    fits, insertions = [], 0
    for _ in range(60):
        scene = random_scene(rng)
        image = stored_image(render(scene))
        text = oracle.answer(image, prompt)
        assert text == oracle.answer(image, prompt) == WorldOracle().answer(image, prompt)
        if read_scene(image)[0] is None or read_scene(image)[0].key() != scene.key():
            continue
        edits = PROMPTS[VlmStage.PROPOSE].parse(text)["edits"]
        assert len({e["edit_type"] for e in edits}) == 4
        fits += [proposal_fits(scene, e["edit_type"], e["instruction"]) for e in edits]
        insertions += sum(e["edit_type"] == "insertion" for e in edits)
        clean = PROMPTS[VlmStage.PROPOSE].parse(WorldOracle(invalid_share=0).answer(image, prompt))["edits"]
        assert all(proposal_fits(scene, e["edit_type"], e["instruction"]) for e in clean)
    expected = INVALID_SHARE * (1 - insertions / len(fits))  # insertions are never made invalid
    assert len(fits) > 200 and abs(1 - sum(fits) / len(fits) - expected) < 0.08


def test_an_image_that_is_no_world_scene_is_rejected_or_judged_not_object_centric():
    oracle = WorldOracle()
    photo = stored_image(Image.open(SAMPLES / "coffee.jpg"))
    for stage in (VlmStage.CAPTION, VlmStage.PROPOSE):
        with pytest.raises(ParseError, match="not JSON"):
            PROMPTS[stage].parse(oracle.answer(photo, PROMPTS[stage].render(count=4)))
    judged = PROMPTS[VlmStage.OBJECT].parse(oracle.answer(photo, PROMPTS[VlmStage.OBJECT].render()))
    assert judged["is_object_centric"] is False and "not a readable scene" in judged["reasoning"]
    with pytest.raises(ValueError, match="not a builder prompt"):
        oracle.answer(photo, "What is this?")


def test_the_builders_openai_backend_reaches_the_oracle_on_loopback(tmp_path):
    rng = random.Random(9)
    scenes = [object_centric_scene(rng) for _ in range(3)] + [random_scene(rng) for _ in range(3)]
    items = [PromptInput(str(i), stored_image(render(s))) for i, s in enumerate(scenes)]
    with serve_oracle() as base_url:
        runner = VlmRunner(OpenAICompatibleBackend(ORACLE_MODEL, base_url), ResponseCache(tmp_path / "c.sqlite"))
        results = runner.run(PROMPTS[VlmStage.OBJECT], items)
    centric = [r.parsed["is_object_centric"] for r in results]
    assert centric == [True] * 3 + [False] * 3
    assert runner.provenance(PROMPTS[VlmStage.OBJECT])["model_id"].startswith("world-oracle-")


@pytest.mark.slow
def test_world_corpus_build_publishes_a_snapshot_the_trainer_reads_and_a_rerun_publishes_nothing(tmp_path, capsys):
    from npedit.cli import main
    from training.config import DataConfig
    from world import PRETRAINED
    from training.data import SnapshotEdits, load_image
    from world.corpus import build_world_corpus, corpus_summary

    built = build_world_corpus(tmp_path, 16, seed=1, tag="world", on_event=lambda m: None)
    meta = built.metadata
    assert meta["rows_images"] == 16 and meta["rows_images_rejected"] == 0
    for check in ("schema_valid", "no_duplicate_keys", "counts_add_up", "edit_type_balance", "validity_rate_in_band"):
        assert meta[f"check_{check}"] == "passed", check
    summary = corpus_summary(built.store, "world")
    assert set(summary["edit_types"]) == set(EDIT_TYPES) and min(summary["edit_types"].values()) >= 2
    assert summary["max_min_ratio"] <= 4 and 0.5 <= summary["validity_rate"] <= 0.9
    assert summary["rows"]["edit_proposals"] == summary["rows"]["edit_instructions"] > 40
    assert summary["rows"]["background_prompts"] > 0

    with lake.session(built.store, read_only=True) as con:  # captions against the truth shipped with the URL list
        pairs = con.execute("SELECT c.caption, i.source_caption FROM lake.captions c JOIN lake.images i "
                            "USING (image_id)").fetchall()
    right = sum(parse_caption(c).key() == parse_caption(truth).key() for c, truth in pairs)
    assert len(pairs) >= 14 and right >= 0.85 * len(pairs)

    edits = SnapshotEdits(built.store, DataConfig(lake_dir=str(tmp_path), snapshot="world"))
    assert len(edits) == round(summary["validity_rate"] * summary["rows"]["edit_instructions"])
    for i in range(len(edits)):
        row = edits.row(i)
        parse_caption(row["edited_caption"])
        assert (row["target_object"] is not None) == (row["edit_type"] in ("replace", "local_texture", "shape_change",
                                                                           "remove", "local_color_change"))
    mixed = SnapshotEdits(built.store, DataConfig(lake_dir=str(tmp_path), snapshot="world", customization_fraction=0.25))
    assert mixed.customizations == summary["rows"]["background_prompts"] > 0  # the object stages feed it as they are
    for i in mixed.members["customization"]:
        row = mixed.row(i)
        assert row["instruction"].startswith(("Show a large", "Keep a large", "Put a large"))
        assert len(parse_caption(row["edited_caption"]).objects) == 1
    image = edits.image_bytes(edits.row(0))
    assert Image.open(io.BytesIO(image)).size == (64, 64) and load_image(image, (64, 64)).shape == (3, 64, 64)

    probe = ["world", "probe-critic", "--editors", str(PRETRAINED / "teacher"), "--seen", str(tmp_path),
             "--edit-types", "local_color_change", "--per-type", "1", "--threads", "1", "--curve", str(tmp_path / "c")]
    assert main(probe) == 0
    printed = capsys.readouterr().out  # the critic on an editor's outputs for the edits it would train on, and fresh
    assert "teacher, its training edits: balanced accuracy" in printed and "held-out edits: balanced accuracy" in printed
    assert "local_color_change/edit" in printed and "remove/" not in printed
    curve = json.loads((tmp_path / "c" / "critic_exploit.json").read_text())
    assert (tmp_path / "c" / "critic_exploit.png").exists() and [p["step"] for p in curve["points"]] == [0]
    assert set(curve["points"][0]["scores"]) == {"seen", "held_out"}
    assert all(0 <= v <= 1 for figures in curve["points"][0]["scores"].values() for v in figures.values())
    assert main(probe) == 0 and "already in" in capsys.readouterr().out  # a rerun probes only new checkpoints
    with pytest.raises(SystemExit, match="was scored with"):
        main([*probe[:-6], "--per-type", "2", "--curve", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="--curve goes with --seen"):
        main(["world", "probe-critic", "--editors", str(PRETRAINED / "teacher"), "--curve", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="no world corpus at"):
        main(["world", "probe-critic", "--editors", str(PRETRAINED / "teacher"), "--seen", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="--seen goes with --editors"):
        main(["world", "probe-critic", "--wrong-object", "--seen", str(tmp_path)])

    before = lake.published_snapshots(built.store).column("snapshot_id").to_pylist()
    cache = ResponseCache(tmp_path / "work" / "vlm_cache.sqlite")
    answered = len(cache)
    again = build_world_corpus(tmp_path, 16, seed=1, tag="world", on_event=lambda m: None)
    assert again.metadata["new_snapshot"] is False and again.snapshot_id == built.snapshot_id
    assert lake.published_snapshots(built.store).column("snapshot_id").to_pylist() == before
    assert len(cache) == answered  # nothing asked again: every stage's files were found
    assert json.loads(json.dumps(corpus_summary(built.store, "world"))) == summary


def test_world_scenes_past_the_object_centric_ones_stay_distinct_and_prefix_stable():
    """A corpus larger than the world's 448 object-centric scenes can hold (x 6 in the cycle) is drawn, not looped on:
    every scene distinct, each object-centric one once, and a seed's first scenes unchanged by asking for more."""
    from world.corpus import world_scenes

    many = world_scenes(3000)
    centric = [s for s in many if len(s.objects) == 1 and s.objects[0].size == "large" and s.pattern == "plain"
               and s.objects[0].cell == 4]
    assert len({s.key() for s in many}) == 3000
    assert 440 <= len(centric) <= 448 + 10  # every object-centric scene (a few 1-object scenes may look alike)
    assert world_scenes(600) == many[:600]
