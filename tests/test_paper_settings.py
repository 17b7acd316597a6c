"""The trainer's settings against the paper: recipes, gradient accumulation, warmup times, eqn. 4 summed over
questions, the critic temperature ramp, the edit-type mix, the re-noising sampler, removal objects, config checks."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from npedit.cli import main as npedit
from snapshot_fixture import fixture_train_config
from training.config import accumulation_steps, load_config, resolved_for
from training.data import EditBatches, edit_type_shares, epoch_quota
from training.questions import questions_for, removed_object
from training.run import build_trainer
from training.sampling import edit_images




# -- recipes and the global batch -------------------------------------------------------------------------------------
def test_the_paper_recipe_holds_the_papers_values():
    paper = load_config("zimage_paper")
    assert (paper.optim.lr, paper.optim.betas[0], paper.data.global_batch_size) == (2e-6, 0.0, 32)
    assert paper.model.critic == "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    assert (paper.loss.lambda_vlm, paper.loss.lambda_dmd, paper.loss.critic_temperature_ramp_steps) == (0.01, 0.5, 0)
    assert (paper.schedule.warmup_steps, paper.schedule.single_step_steps) == (250, 4000)
    assert [accumulation_steps(paper.data, n) for n in (1, 8, 32)] == [32, 4, 1]
    assert resolved_for(load_config("debug_tiny"), 4).data.global_batch_size == 8  # 2 x 4 ranks, no accumulation
    with pytest.raises(ValueError, match="not a multiple of data.batch_size 1 x 5 ranks"):
        accumulation_steps(paper.data, 5)
    reimplementation = load_config("zimage_reimplementation")
    assert (reimplementation.optim.lr, reimplementation.data.global_batch_size) == (2e-5, 8)
    assert reimplementation.data.edit_type_weights == {"remove": 0.25}
    assert (paper.schedule.warmup_text, reimplementation.schedule.warmup_text) == ("do_nothing", "reference_caption")


def _generator_grads(trainer, *batches) -> torch.Tensor:
    """The gradient one update over `batches` would apply (the step itself is skipped)."""
    captured = {}

    def capture(params, optimizer, name):
        captured["g"] = torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone()
        return 0.0, True

    trainer._clip_and_step = capture
    trainer.generator_step(*batches)
    return captured["g"]


def test_gradient_accumulation_averages_the_micro_batches(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **{"data.batch_size": 1, "data.global_batch_size": 2,
                                               "schedule.total_steps": 2, "log.checkpoint_every": 100})
    trainer = build_trainer(config, tmp_path)
    assert trainer.accumulation == 2
    a, b = next(trainer.batches), next(trainer.batches)
    state = trainer.rng.get_state()
    together = _generator_grads(trainer, a, b)
    trainer.rng.set_state(state)  # the same noise, one micro-batch at a time
    separately = (_generator_grads(trainer, a) + _generator_grads(trainer, b)) / 2
    assert torch.allclose(together, separately, atol=1e-6, rtol=1e-4)
    trained = build_trainer(config, tmp_path / "run")
    trained.train(progress=False)
    assert trained.batches.state_dict()["position"] == 4  # 2 steps x 2 micro-batches (warmup: no fake updates)


# -- warmup times, eqn. 4, temperature ---------------------------------------------------------------------------------
def test_identity_warmup_draws_t_through_the_time_shift(lake_dir, tiny_models, tmp_path):
    trainer = build_trainer(fixture_train_config(lake_dir, tiny_models), tmp_path)
    for shift in (3.0, 6.0):
        trainer.generator.shift = shift
        t = trainer.warmup_times(40_000)
        expected = 1 - 0.9 / (shift - (shift - 1) * 0.9)  # P(shift(u) > 0.9) for u ~ U[0, 1]: 0.25 and 0.40
        assert abs(float((t > 0.9).float().mean()) - expected) < 0.01, shift
        assert float(t.min()) >= 0 and float(t.max()) <= 1


def test_the_warmup_copies_given_the_sources_caption_or_do_nothing(lake_dir, tiny_models, tmp_path, monkeypatch):
    from snapshot_fixture import REFERENCE_CAPTIONS

    trainer = build_trainer(fixture_train_config(lake_dir, tiny_models, **{
        "schedule.warmup_text": "reference_caption", "data.batch_size": 6}), tmp_path)
    batch = next(trainer.batches)
    by_instruction = {row["instruction"]: row["reference_caption"] for row in trainer.batches.dataset.table.to_pylist()}
    assert sorted(map(str, batch.reference_captions)) == sorted(map(str, [*REFERENCE_CAPTIONS.values(), None]))
    assert [by_instruction[i] for i in batch.instructions] == batch.reference_captions
    texts = trainer.warmup_texts(batch)
    assert texts == [caption or "do nothing" for caption in batch.reference_captions]
    seen = []
    encode = trainer.generator.encode_text
    monkeypatch.setattr(trainer.generator, "encode_text", lambda texts, **kw: seen.append(texts) or encode(texts, **kw))
    trainer.batches.load_state_dict({"epoch": 0, "position": 0})  # the step trains on the batch read above
    trainer.train(until=1, progress=False)
    assert seen[0] == texts  # the warmup step conditioned each copy on its source's caption
    plain = build_trainer(fixture_train_config(lake_dir, tiny_models), tmp_path / "plain")
    assert plain.warmup_texts(batch) == ["do nothing"] * len(batch.instructions)


class FixedCritic:
    """Answers every question with the next (yes, no) logit pair it was given."""

    def __init__(self, pairs):
        self.pairs = pairs

    def answer_logits(self, groups, texts):
        pairs = self.pairs[: len(texts)]
        return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def test_vlm_loss_sums_the_two_questions_as_eqn_4(lake_dir, tiny_models, tmp_path):
    trainer = build_trainer(fixture_train_config(lake_dir, tiny_models, **{"schedule.warmup_steps": 0}), tmp_path)
    batch = next(trainer.batches)
    trainer.critic = FixedCritic([(2.0, 0.0), (0.0, 1.0), (0.5, 0.5), (3.0, -1.0)])
    per_sample, _ = trainer._vlm(batch.references, batch)
    expected = []
    for b in range(2):
        total = 0.0
        for q, (yes, no) in zip(questions_for(batch.edit_types[b], batch.instructions[b]), trainer.critic.pairs[2 * b:]):
            gap = (yes - no) if q.correct == "Yes" else (no - yes)
            total += math.log1p(math.exp(-gap))  # -log sigmoid(gap), T = 1
        expected.append(total)
    assert torch.allclose(per_sample, torch.tensor(expected), atol=1e-6)


def test_without_the_identity_question_only_the_edit_question_is_asked(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **{"schedule.warmup_steps": 0,
                                                            "loss.identity_question": False})
    trainer = build_trainer(config, tmp_path)
    batch = next(trainer.batches)
    asked = []

    class Recording(FixedCritic):
        def answer_logits(self, groups, texts):
            asked.extend(texts)
            return super().answer_logits(groups, texts)

    trainer.critic = Recording([(1.0, 0.0)] * 8)
    per_sample, metrics = trainer._vlm(batch.references, batch)
    targets = batch.target_objects or [None, None]
    edit_questions = [[q.text for q in questions_for(t, i, o) if q.kind == "edit"]
                      for t, i, o in zip(batch.edit_types, batch.instructions, targets)]
    assert asked == [text for texts in edit_questions for text in texts]
    assert set(metrics) == {"vlm/p_correct_edit"} and per_sample.shape == (2,)


def test_the_critic_temperature_ramp_starts_at_the_first_vlm_step(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **{"schedule.warmup_steps": 250,
                                               "loss.critic_temperature_ramp_steps": 2000})
    trainer = build_trainer(config, tmp_path)
    temperatures = {}
    for step in (0, 250, 1250, 2250, 5000):
        trainer.step = step
        temperatures[step] = trainer.critic_temperature()
    assert temperatures == pytest.approx({0: 0.1, 250: 0.1, 1250: 0.55, 2250: 1.0, 5000: 1.0})


# -- the edit-type mix -------------------------------------------------------------------------------------------------
def test_edit_type_shares_and_quota():
    counts = Counter({"remove": 1, "style": 6, "background": 3})
    assert edit_type_shares(counts, {}) == pytest.approx({"background": 1 / 3, "remove": 1 / 3, "style": 1 / 3})
    shares = edit_type_shares(counts, {"remove": 0.25})
    assert shares == pytest.approx({"background": 0.375, "remove": 0.25, "style": 0.375})
    assert edit_type_shares(counts, {"insertion": 0.5}) == pytest.approx({t: 1 / 3 for t in counts})  # absent: renormalised
    quota = epoch_quota(shares, 10)
    assert sum(quota.values()) == 10 and quota["remove"] in (2, 3)
    with pytest.raises(ValueError, match="give no weight"):
        edit_type_shares(counts, {"remove": 0.0, "style": 0.0, "background": 0.0})


class FakeDataset:
    """What `EditBatches` reads of a snapshot: edit types, their members and shares, one bucket."""

    def __init__(self, types: list[str], weights: dict[str, float]):
        self.edit_types, self.bucket, self.sizes = types, [0] * len(types), [(64, 64)]
        self.members: dict[str, list[int]] = {}
        for i, t in enumerate(types):
            self.members.setdefault(t, []).append(i)
        self.shares = edit_type_shares(Counter(types), weights)

    def __len__(self):
        return len(self.edit_types)


def test_the_epoch_holds_each_type_at_its_share_and_rotates_members():
    types = ["style"] * 90 + ["remove"] * 10
    data = FakeDataset(types, {"remove": 0.5})
    batches = EditBatches(data, 4, seed=0)
    mix = batches.realised_mix()
    assert mix["remove"] == pytest.approx(0.5, abs=0.02)  # 4-sample batches wrap by at most 3 samples
    seen_style = {i for e in range(2) for b in batches.epoch_batches(e) for i in b if types[i] == "style"}
    assert len(seen_style) == 90  # 45 style samples an epoch: two epochs visit all 90
    natural = FakeDataset(types, {"remove": 0.1})
    order = EditBatches(natural, 1, seed=0).epoch_order(0)
    assert sorted(order) == list(range(100))  # shares equal to the snapshot's: every edit exactly once


# -- sampling --------------------------------------------------------------------------------------------------------
def test_the_renoise_sampler_matches_euler_at_one_step_and_differs_after(zimage):
    references = torch.rand(1, 3, 32, 32) * 2 - 1
    outputs = {(sampler, steps): edit_images(zimage, references, ["Make it blue"], num_steps=steps, sampler=sampler,
                                             generator=torch.Generator().manual_seed(0))
               for sampler in ("renoise", "euler") for steps in (1, 3)}
    assert torch.equal(outputs["renoise", 1], outputs["euler", 1])
    assert not torch.allclose(outputs["renoise", 3], outputs["euler", 3], atol=1e-4)
    with pytest.raises(ValueError, match="unknown sampler"):
        edit_images(zimage, references, ["x"], sampler="ddpm")


# -- removal questions --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("instruction, target", [
    ("Take the hat off the man", "the hat"),
    ("Make the dog disappear", "the dog"),
    ("Eliminate the trash can", "the trash can"),
    ("get rid of the parked car.", "the parked car"),
    ("Remove the cup from the image", "the cup"),
    ("Remove the red car on the left", "the red car on the left"),
])
def test_removal_phrasings_name_the_object(instruction, target):
    assert removed_object(instruction) == target
    assert questions_for("remove", instruction)[0].text == f"Does this image contain {target}? Answer Yes or No."


def test_a_removal_without_a_known_object_asks_the_general_question_and_the_column_wins():
    unknown = questions_for("remove", "Let the sky be empty")
    assert unknown[0].images == ("reference", "output") and unknown[0].correct == "Yes"
    assert all("Does this image contain" not in q.text for q in unknown)
    from_column = questions_for("remove", "Take the hat off the man", target_object="the straw hat")
    assert from_column[0].text == "Does this image contain the straw hat? Answer Yes or No."
    assert from_column[0].correct == "No" and from_column[0].images == ("output",)


# -- config checks, before any model loads -----------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("loss.lambda_vlm", "abc", "loss.lambda_vlm must be a number, not 'abc'"),
    ("optim.lr", -1e-5, "optim.lr must be > 0"),
    ("loss.do_nothing_prob", 1.5, "loss.do_nothing_prob must lie in [0, 1]"),
    ("loss.lambda_consistency", -0.5, "loss.lambda_consistency must be >= 0"),
    ("schedule.two_step_prob", -0.1, "schedule.two_step_prob must lie in [0, 1]"),
    ("loss.dmd_t_max", 1.0, "loss.dmd_t_max must lie in (loss.dmd_t_min, 1)"),
    ("schedule.two_step_times", [0.5, 1.0], "schedule.two_step_times must lie strictly between 0 and 1"),
    ("data.batch_size", 0, "data.batch_size must be >= 1"),
    ("data.batch_size", True, "data.batch_size must be an integer"),
    ("data.global_batch_size", 3, "data.global_batch_size must be a positive multiple of data.batch_size"),
    ("data.edit_type_weights", {"removal": 0.2}, "may only name edit types"),
    ("data.edit_type_weights", {"remove": 0.7, "style": 0.6}, "must be probabilities summing to at most 1"),
    ("data.resolution", 50, "must be a positive multiple of 16"),
    ("model.dtype", "fp8", "model.dtype must be one of float32, bfloat16, float16"),
    ("log.checkpoint_every", 0, "log.checkpoint_every must be >= 1"),
    ("optim.betas", [0.9], "optim.betas must be a list of 2"),
    ("loss.strong_cfg_edit_types", ["recolor"], "may only name edit types"),
    ("loss.zzz", 1, "no config field 'loss.zzz'"),
    ("schedule.warmup_text", "caption", "schedule.warmup_text must be one of do_nothing, reference_caption"),
])
def test_bad_config_values_are_one_line_errors(key, value, message):
    with pytest.raises(ValueError) as error:
        load_config("debug_tiny", overrides={key: value})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_toml_with_a_wrong_type_is_refused(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('[optim]\nlr = "fast"\n')
    with pytest.raises(ValueError, match="optim.lr must be a number, not 'fast'"):
        load_config("debug_tiny", toml)
    toml.write_text('[data]\nedit_type_weights = { remove = 0.25 }\n')
    assert load_config("debug_tiny", toml).data.edit_type_weights == {"remove": 0.25}


def test_the_cli_refuses_bad_values_and_model_types_before_loading_weights(lake_dir, tiny_models, tmp_path,
                                                                           monkeypatch, capsys):
    from training.backbones import ZImageBackbone
    from training.critics import QwenVLCritic

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(ZImageBackbone, "from_pretrained", never)
    monkeypatch.setattr(QwenVLCritic, "from_pretrained", never)
    common = ["train", "--lake-dir", str(lake_dir), "--out", str(tmp_path / "run"),
              "--set", f"model.generator={tiny_models.generator}"]
    assert npedit([*common, "--set", f"model.critic={tiny_models.vlm}", "--set", "loss.lambda_vlm=abc"]) == 2
    assert capsys.readouterr().err.strip() == "npedit: error: loss.lambda_vlm must be a number, not 'abc'"
    not_a_vlm = tmp_path / "bert"
    not_a_vlm.mkdir()
    (not_a_vlm / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert npedit([*common, "--set", f"model.critic={not_a_vlm}"]) == 2
    assert "no critic for model type 'bert'" in capsys.readouterr().err
    assert npedit([*common, "--set", f"model.critic={tiny_models.vlm}", "--set",
                   f"model.generator={tiny_models.vlm}"]) == 2
    assert "model.generator: cannot read a diffusers model_index.json" in capsys.readouterr().err


def test_removal_questions_take_the_snapshots_target_object_and_older_snapshots_fall_back(lake_dir, tiny_models,
                                                                                          monkeypatch):
    import training.data
    from datasets_builder.lake import LakeConfig
    from training.data import SnapshotEdits

    config = fixture_train_config(lake_dir, tiny_models).data
    dataset = SnapshotEdits(LakeConfig.local(lake_dir), config)
    assert dataset.removal_targets() == Counter(column=1)
    batches = EditBatches(dataset, len(dataset), seed=0)
    batch = next(batches)
    removal = batch.edit_types.index("remove")
    assert batch.target_objects[removal] == "the white coffee cup"
    text = questions_for("remove", batch.instructions[removal], batch.target_objects[removal])[0].text
    assert text == "Does this image contain the white coffee cup? Answer Yes or No."
    columns = training.data.table_columns
    monkeypatch.setattr(training.data, "table_columns", lambda *a: [c for c in columns(*a) if c != "target_object"])
    older = SnapshotEdits(LakeConfig.local(lake_dir), config)  # as a schema-1 snapshot reads
    assert older.removal_targets() == Counter(phrasing=1)
    assert next(EditBatches(older, len(older), seed=0)).target_objects == [None] * len(older)
