"""The trainer end to end on tiny models: gradients, learning, DMD direction, exact resume, CLI train/edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from npedit.cli import main as npedit
from schemas.errors import ConfigError
from snapshot_fixture import EDITS, fixture_train_config
from training.config import load_config
from training.data import EditBatches, SnapshotEdits, bucket_sizes
from training.run import build_trainer
from training.unroll import UnrollPlan, unroll




PURE = {"loss.do_nothing_prob": 0.0, "schedule.warmup_steps": 0, "schedule.single_step_steps": 1000,
        "schedule.fake_steps_per_generator_step": 0}


def _p_correct(trainer, batch, seeds=(11, 12)) -> float:
    """Mean P(correct answer) over both questions of every sample, on fixed noise."""
    g = trainer.generator
    total = 0.0
    with torch.no_grad():
        refs = g.encode_images(batch.references)
        text = g.encode_text(batch.instructions, num_references=1)
        for seed in seeds:
            noise = torch.randn(refs.shape, generator=torch.Generator().manual_seed(seed))
            images = g.decode_latents(unroll(g, noise, text, refs, UnrollPlan((1.0,))))
            loss, _ = trainer._vlm(images, batch)
            total += float(torch.exp(-loss / 2).mean())  # loss sums -log p over 2 questions: a geometric-mean P
    return total / len(seeds)


def test_data_reads_valid_edits_in_buckets_and_shards_by_rank(lake_dir, tiny_models):
    config = fixture_train_config(lake_dir, tiny_models, **{"data.aspect_ratios": (0.75, 1.0, 1.333)})
    from datasets_builder.lake import LakeConfig

    dataset = SnapshotEdits(LakeConfig.local(lake_dir), config.data)
    assert len(dataset) == len(EDITS)  # the invalid row is left out
    ranks = [EditBatches(dataset, 1, seed=0, rank=r, world_size=2).epoch_batches(0) for r in (0, 1)]
    seen = [i for batches in ranks for b in batches for i in b]
    assert sorted(seen) == list(range(len(EDITS)))
    batch = next(EditBatches(dataset, 2, seed=0))
    assert tuple(batch.references.shape[-2:]) in bucket_sizes(64, (0.75, 1.0, 1.333))
    assert batch.references.min() >= -1 and batch.references.max() <= 1


def test_vlm_loss_backward_reaches_generator_parameters(lake_dir, tiny_models, tmp_path):
    trainer = build_trainer(fixture_train_config(lake_dir, tiny_models, **PURE, **{"loss.lambda_dmd": 0.0}), tmp_path)
    batch = next(trainer.batches)
    g = trainer.generator
    refs = g.encode_images(batch.references)
    text = g.encode_text(batch.instructions, num_references=1)
    noise = torch.randn(refs.shape, generator=torch.Generator().manual_seed(0))
    x0 = unroll(g, noise, text, refs, UnrollPlan((1.0, 0.5)))
    loss, _ = trainer._vlm(g.decode_latents(x0), batch)
    loss.mean().backward()
    grads = [p.grad for p in g.transformer.parameters()]
    assert sum(1 for gr in grads if gr is not None and gr.abs().sum() > 0) > 0.8 * len(grads)
    assert all(p.grad is None for p in trainer.critic.model.parameters())
    assert all(p.grad is None for p in g.vae.parameters())


def test_vlm_loss_alone_raises_the_critics_p_correct(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **PURE, **{"loss.lambda_dmd": 0.0, "loss.lambda_vlm": 1.0,
                                                         "optim.lr": 1e-3})
    trainer = build_trainer(config, tmp_path)
    batch = next(trainer.batches)
    before = _p_correct(trainer, batch)
    for _ in range(60):
        trainer.generator_step(batch)
        trainer.step += 1
    after = _p_correct(trainer, batch)
    assert after > before + 0.01, (before, after)


def test_dmd_alone_moves_the_generator_toward_the_teacher(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **{**PURE, "schedule.fake_steps_per_generator_step": 2},
                     **{"loss.lambda_dmd": 1.0, "loss.lambda_vlm": 0.0, "loss.cfg_scale": 1.0,
                        "loss.strong_cfg_scale": 1.0, "optim.lr": 1e-3, "optim.fake_lr": 1e-3})
    trainer = build_trainer(config, tmp_path)
    batch = next(trainer.batches)
    assert float(trainer.generator_step(batch).metrics["loss/dmd"]) < 1e-10  # teacher == fake == generator, CFG 1
    with torch.no_grad():  # a teacher whose clean estimates sit higher: x0_real = x0 + t per element
        next(iter(trainer.teacher.transformer.all_final_layer.values())).linear.bias.add_(1.0)
    g = trainer.generator

    def mean_output() -> float:
        with torch.no_grad():
            refs = g.encode_images(batch.references)
            text = g.encode_text(batch.instructions, num_references=1)
            noise = torch.randn(refs.shape, generator=torch.Generator().manual_seed(5))
            return float(unroll(g, noise, text, refs, UnrollPlan((1.0,))).mean())

    before = mean_output()
    for _ in range(20):
        for _ in range(2):
            trainer.fake_score_step(batch)
        trainer.generator_step(batch)
        trainer.step += 1
    assert mean_output() > before + 0.3


def test_the_consistency_term_alone_pulls_edits_toward_their_reference(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **PURE, **{"loss.lambda_dmd": 0.0, "loss.lambda_vlm": 0.0,
                                                         "loss.lambda_consistency": 1.0, "optim.lr": 3e-3})
    trainer = build_trainer(config, tmp_path)
    batch = next(trainer.batches)
    trainer.critic.answer_logits = None  # the VLM term is off: the critic is never asked
    history = []
    for _ in range(20):
        history.append(trainer.generator_step(batch).metrics)
        trainer.step += 1
    losses = [row["loss/consistency"] for row in history]  # fresh noise each step: compare the ends' means
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, losses
    assert history[0]["loss/total"] == pytest.approx(losses[0])  # the only term, on edit samples alone


@pytest.mark.parametrize("weights", [{"loss.lambda_dmd": 0.0}, {"loss.lambda_vlm": 0.0}])
def test_a_loss_term_weighted_zero_is_not_computed(lake_dir, tiny_models, tmp_path, weights):
    config = fixture_train_config(lake_dir, tiny_models, **{**PURE, "schedule.fake_steps_per_generator_step": 2},
                                  **weights)
    trainer = build_trainer(config, tmp_path)
    calls = {"teacher": 0, "fake_update": 0, "critic": 0}

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return call

    trainer.teacher.predict_velocity = counted("teacher", trainer.teacher.predict_velocity)
    trainer.fake_score_step = counted("fake_update", trainer.fake_score_step)
    trainer.critic.answer_logits = counted("critic", trainer.critic.answer_logits)
    history = trainer.train(until=2, progress=False)
    if weights.get("loss.lambda_dmd") == 0.0:  # VLM only: no teacher, no fake score, the critic every step
        assert calls == {"teacher": 0, "fake_update": 0, "critic": 2}
        assert "loss/dmd" not in history[-1] and "loss/vlm" in history[-1]
    else:  # DMD only: the teacher and 2 fake-score updates every step, no critic
        assert calls == {"teacher": 2, "fake_update": 4, "critic": 0}
        assert "loss/vlm" not in history[-1] and "loss/dmd" in history[-1]
    assert "loss/consistency" not in history[-1]  # off by default, as in the paper
    assert all(torch.isfinite(torch.tensor(row["loss/total"])) for row in history)


@pytest.mark.parametrize("interrupt_at", [1, 3])  # 1: still in warmup, the fake optimizer has not stepped
def test_interrupted_and_resumed_run_ends_with_identical_weights(lake_dir, tiny_models, tmp_path, interrupt_at):
    overrides = {"schedule.total_steps": 6, "schedule.warmup_steps": 2, "schedule.single_step_steps": 1,
                 "schedule.two_step_prob": 1.0, "log.checkpoint_every": interrupt_at, "log.image_every": 3,
                 "log.keep_checkpoints": 2}
    config = fixture_train_config(lake_dir, tiny_models, **overrides)
    straight = build_trainer(config, tmp_path / "a")
    straight.train(progress=False)
    first = build_trainer(config, tmp_path / "b")
    first.train(until=interrupt_at, progress=False)
    with open(tmp_path / "b" / "metrics.jsonl", "a") as log:  # what the killed process logged after its checkpoint
        log.write(json.dumps({"step": interrupt_at + 1, "loss/total": -1.0}) + "\n" + '{"step": 9, "loss/to')
    del first  # the "killed" process
    resumed = build_trainer(config, tmp_path / "b")
    assert resumed.resume() and resumed.step == interrupt_at
    resumed.train(progress=False)
    assert len(list((tmp_path / "b" / "checkpoints").glob("step-*"))) <= 2
    for name in ("generator", "fake"):
        a = getattr(straight, name).transformer.state_dict()
        b = getattr(resumed, name).transformer.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "b" / "images" / "step-0000006.png").exists()
    assert (tmp_path / "b" / "loss_curves.png").exists()
    assert list((tmp_path / "b" / "tensorboard").iterdir())
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == list(range(1, 7))  # every step once, the killed process's extra gone
    assert all(row["loss/total"] != -1.0 for row in logged)


def test_cli_trains_then_edits_and_the_checkpoint_loads_in_diffusers(lake_dir, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("NPEDIT_HOME", str(Path(tiny_models.root).parents[1]))
    out = tmp_path / "run"
    assert npedit(["train", "--lake-dir", str(lake_dir), "--snapshot", "fixture", "--out", str(out),
                   "--steps", "4", "--set", "log.checkpoint_every=2"]) == 0
    assert json.loads((out / "config.json").read_text())["data"]["global_batch_size"] == 2  # resolved: 2 x 1 rank
    edited = tmp_path / "edited.png"
    image = Path(__file__).resolve().parents[1] / "datasets_builder" / "sample_images" / "coffee.jpg"
    assert npedit(["edit", "--checkpoint", str(out), "--image", str(image), "--instruction", "Add a cat",
                   "--steps", "2", "--out", str(edited), "--width", "64", "--height", "48"]) == 0
    from PIL import Image

    assert Image.open(edited).size == (64, 48)
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(out / "checkpoints" / "step-0000004" / "generator")
    assert type(pipe.transformer).__name__ == "ZImageTransformer2DModel"
    assert npedit(["edit", "--checkpoint", str(tmp_path), "--image", str(image), "--instruction", "x"]) == 2


def test_bad_training_configs_are_clear_errors(lake_dir, tiny_models, tmp_path):
    with pytest.raises(ValueError, match="unknown recipe"):
        load_config("nope")
    with pytest.raises(ValueError, match="multiple of 16"):
        fixture_train_config(lake_dir, tiny_models, **{"data.resolution": 50})
    with pytest.raises(ValueError, match="no config field"):
        fixture_train_config(lake_dir, tiny_models, **{"loss.lambda_zzz": 1})
    toml = tmp_path / "bad.toml"
    toml.write_text("[loss]\nlambda_vml = 0.1\n")
    with pytest.raises(ValueError, match="unknown key 'lambda_vml'"):
        load_config("debug_tiny", toml)
    with pytest.raises(LookupError, match="no published snapshot 'v9'"):
        build_trainer(fixture_train_config(lake_dir, tiny_models, **{"data.snapshot": "v9"}), tmp_path)


def test_a_generator_step_with_the_llava_onevision_critic(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **PURE, **{"model.critic": str(tiny_models.llava)})
    trainer = build_trainer(config, tmp_path)
    batch = next(trainer.batches)
    metrics = trainer.generator_step(batch).metrics
    assert type(trainer.critic).__name__ == "LlavaOnevisionCritic"
    assert metrics["generator/grad_norm"] > 0 and 0 < metrics["vlm/p_correct_edit"] < 1


def test_activation_checkpointing_gives_the_same_gradients(lake_dir, tiny_models, tmp_path):
    grads = []
    for checkpointing in (False, True):
        config = fixture_train_config(lake_dir, tiny_models, **PURE, **{"model.gradient_checkpointing": checkpointing})
        trainer = build_trainer(config, tmp_path / str(checkpointing))
        g = trainer.generator
        batch = next(trainer.batches)
        refs = g.encode_images(batch.references)
        text = g.encode_text(batch.instructions, num_references=1)
        noise = torch.randn(refs.shape, generator=torch.Generator().manual_seed(0))
        unroll(g, noise, text, refs, UnrollPlan((1.0, 0.5))).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in g.transformer.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_images_are_read_by_row_group_not_all_at_once(lake_dir, tiny_models):
    from datasets_builder.lake import LakeConfig, table_files
    import pyarrow.parquet as pq

    config = fixture_train_config(lake_dir, tiny_models)
    dataset = SnapshotEdits(LakeConfig.local(lake_dir), config.data)
    files = table_files(LakeConfig.local(lake_dir), "images", "fixture")
    assert all(pq.ParquetFile(f).metadata.row_group(0).num_rows <= 64 for f in files)
    assert "image" not in dataset.table.column_names  # pixels stay on disk until a batch needs them
    row = dataset.row(0)
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(dataset.image_bytes(row))).size[0] > 0


def test_checkpoints_link_frozen_parts_written_once_when_the_base_is_not_a_folder(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **{"schedule.total_steps": 2, "log.checkpoint_every": 1})
    trainer = build_trainer(config, tmp_path)
    trainer.generator.source = "some-org/some-model"  # as when the base was given as a hub id
    trainer.train(progress=False)
    frozen = tmp_path / "frozen_components"
    for step in (1, 2):
        generator = tmp_path / "checkpoints" / f"step-{step:07d}" / "generator"
        for name in ("text_encoder", "tokenizer", "vae", "scheduler"):
            assert (generator / name).is_symlink() and (generator / name).resolve() == (frozen / name).resolve()
    from training.backbones import ZImageBackbone

    loaded = ZImageBackbone.from_pretrained(tmp_path / "checkpoints" / "step-0000002" / "generator")
    assert loaded.shift == trainer.generator.shift


def test_the_editor_starts_from_generator_init_while_teacher_and_fake_score_start_from_the_generator(
        lake_dir, tiny_models, tmp_path):
    from diffusers import ZImageTransformer2DModel

    base = ZImageTransformer2DModel.from_pretrained(tiny_models.generator, subfolder="transformer").state_dict()
    start = ZImageTransformer2DModel.from_pretrained(tiny_models.generator, subfolder="transformer")
    with torch.no_grad():
        for parameter in start.parameters():
            parameter.add_(0.01)
    start.save_pretrained(tmp_path / "start" / "transformer")
    moved = start.state_dict()
    config = fixture_train_config(lake_dir, tiny_models, **{**PURE, "model.generator_init": str(tmp_path / "start")})
    trainer = build_trainer(config, tmp_path / "run")

    def equal(model, weights) -> bool:
        state = model.transformer.state_dict()
        return all(torch.equal(state[k], weights[k]) for k in weights)

    assert equal(trainer.generator, moved) and equal(trainer.teacher, base) and equal(trainer.fake, base)
    batch = next(trainer.batches)
    assert float(trainer.generator_step(batch).metrics["loss/dmd"]) > 0  # the editor is no longer the teacher
    trainer.train(until=1, progress=False)
    assert not equal(trainer.generator, moved) and equal(trainer.teacher, base)  # the optimizer holds the new weights
    with pytest.raises(ConfigError, match="no transformer loads from"):
        build_trainer(fixture_train_config(lake_dir, tiny_models, **{"model.generator_init": str(tmp_path / "no")}),
                      tmp_path / "a")
    with pytest.raises(ConfigError, match="is not model.generator's architecture"):
        build_trainer(fixture_train_config(lake_dir, tiny_models, **{"model.generator_init": str(tiny_models.omni)}),
                      tmp_path / "b")
