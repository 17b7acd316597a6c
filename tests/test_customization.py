"""Subject customization: samples from object-centric rows, the mixture, the critic's questions, gradients, the CLI."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from PIL import Image

from cli_run import run_cli
from datasets_builder.lake import LakeConfig
from schemas.errors import ConfigError
from snapshot_fixture import EDITS, OBJECTS_CENTRIC, SCENES, fixture_train_config, write_fixture_snapshot
from training.config import resolved_for
from training.customization import CUSTOMIZATION, customization_instruction
from training.data import EditBatches, SnapshotEdits
from training.questions import OUTPUT, REFERENCE
from training.run import build_trainer, describe_run
from training.trainer import sample_questions
from training.unroll import UnrollPlan, unroll

PURE = {"loss.do_nothing_prob": 0.0, "schedule.warmup_steps": 0, "schedule.single_step_steps": 1000,
        "schedule.fake_steps_per_generator_step": 0}


@pytest.fixture(scope="module")
def objects_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects_lake")
    write_fixture_snapshot(root, objects=True)
    return root


def _customization_only(batches: EditBatches):
    """The first batch of the epoch made only of customization samples."""
    for _ in range(50):
        batch = next(batches)
        if set(batch.edit_types) == {CUSTOMIZATION}:
            return batch
    raise AssertionError("no customization-only batch in 50")


def test_samples_come_from_object_centric_rows_with_the_scene_as_teacher_caption(objects_lake, tiny_models):
    config = fixture_train_config(objects_lake, tiny_models, **{"data.customization_fraction": 0.5})
    dataset = SnapshotEdits(LakeConfig.local(objects_lake), config.data)
    rows = [dataset.row(i) for i in dataset.members[CUSTOMIZATION]]
    assert dataset.customizations == len(rows) == len(OBJECTS_CENTRIC) * len(SCENES)  # the stray prompt is left out
    for row in rows:
        scene = row["edited_caption"]
        assert row["target_object"] in OBJECTS_CENTRIC.values() and scene.startswith(row["target_object"])
        assert row["instruction"] in {customization_instruction(row["target_object"], scene, v) for v in range(3)}
    assert len(dataset) == len(EDITS) + len(rows)


def test_a_customization_batch_asks_identity_context_and_copy_questions_in_order(objects_lake, tiny_models, tmp_path):
    config = fixture_train_config(objects_lake, tiny_models, **PURE, **{"data.customization_fraction": 0.5,
                                                                       "data.batch_size": 2})
    trainer = build_trainer(config, tmp_path)
    batch = _customization_only(trainer.batches)
    asked = sample_questions(batch, 0)
    assert [(q.images, q.correct, q.kind) for q in asked] == [
        ((REFERENCE, OUTPUT), "Yes", "identity"), ((OUTPUT,), "Yes", "edit"), ((REFERENCE, OUTPUT), "No", "copy")]
    assert batch.target_objects[0] in asked[0].text and batch.edited_captions[0].rstrip(".") in asked[1].text
    seen = []
    trainer.critic.answer_logits = lambda groups, texts: (seen.append((groups, texts)),
                                                          torch.zeros(len(texts)), torch.zeros(len(texts)))[1:]
    outputs = torch.rand_like(batch.references) * 2 - 1
    trainer._vlm(outputs, batch)
    groups, texts = seen[0]
    assert texts == [q.text for b in range(2) for q in sample_questions(batch, b)]
    assert torch.equal(groups[0][0], batch.references[0]) and torch.equal(groups[0][1], outputs[0])
    assert len(groups[1]) == 1 and torch.equal(groups[1][0], outputs[0])  # the scene question sees the output alone


def test_gradients_reach_the_generator_from_customization_samples(objects_lake, tiny_models, tmp_path):
    config = fixture_train_config(objects_lake, tiny_models, **PURE, **{"data.customization_fraction": 0.5})
    trainer = build_trainer(config, tmp_path)
    batch = _customization_only(trainer.batches)
    g = trainer.generator
    refs = g.encode_images(batch.references)
    noise = torch.randn(refs.shape, generator=torch.Generator().manual_seed(0))
    x0 = unroll(g, noise, g.encode_text(batch.instructions, num_references=1), refs, UnrollPlan((1.0,)))
    loss, metrics = trainer._vlm(g.decode_latents(x0), batch)
    loss.mean().backward()
    assert {"vlm/p_correct_identity", "vlm/p_correct_edit", "vlm/p_correct_copy"} <= set(metrics)
    grads = [p.grad for p in g.transformer.parameters()]
    assert sum(1 for gr in grads if gr is not None and gr.abs().sum() > 0) > 0.8 * len(grads)
    assert all(p.grad is None for p in trainer.critic.model.parameters())


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_the_mixture_holds_over_every_epoch(objects_lake, tiny_models, fraction):
    config = fixture_train_config(objects_lake, tiny_models, **{"data.customization_fraction": fraction})
    dataset = SnapshotEdits(LakeConfig.local(objects_lake), config.data)
    batches = EditBatches(dataset, 1, seed=3)
    for epoch in range(3):
        order = batches.epoch_order(epoch)
        share = Counter(dataset.edit_types[i] for i in order)[CUSTOMIZATION] / len(order)
        assert abs(share - fraction) <= 1 / len(order)


def test_a_snapshot_without_object_rows_trains_editing_alone_and_says_so(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **PURE, **{"data.customization_fraction": 0.5})
    trainer = build_trainer(config, tmp_path)
    assert CUSTOMIZATION not in trainer.batches.dataset.shares
    assert "has no object-centric images with background prompts; training editing alone" in describe_run(trainer, 1)
    with pytest.raises(ConfigError, match="data.customization_fraction must lie in \\[0, 1\\)"):
        resolved_for(fixture_train_config(lake_dir, tiny_models, **{"data.customization_fraction": 1.0}), 1)


def test_cli_customizes_from_a_checkpoint(tiny_models, tmp_path, capsys):
    image = tmp_path / "backpack.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    out = tmp_path / "customized.png"
    code, printed, _ = run_cli(capsys, "edit", "--checkpoint", str(tiny_models.generator), "--image", str(image),
                               "--task", "customize", "--object", "the red backpack", "--scene", "on a beach at dusk",
                               "--out", str(out))
    assert code == 0 and Image.open(out).size == (64, 64)
    assert customization_instruction("the red backpack", "on a beach at dusk") in printed
    code, _, error = run_cli(capsys, "edit", "--checkpoint", str(tiny_models.generator), "--image", str(image),
                             "--task", "customize", "--object", "the red backpack")
    assert code == 2 and error.strip() == "npedit: error: --task customize needs --object and --scene"
