"""LoRA training: only the adapters learn, resume is exact, and the saved adapter runs in diffusers' pipeline."""

from __future__ import annotations

import pytest
import torch

from snapshot_fixture import fixture_train_config
from training.checkpoint import latest_checkpoint
from training.config import load_config
from training.lora import LORA_WEIGHTS
from training.run import build_trainer

LORA = {"lora.rank": 4, "lora.alpha": 8.0, "optim.lr": 1e-2, "loss.do_nothing_prob": 0.0,
        "schedule.warmup_steps": 1, "schedule.single_step_steps": 1, "schedule.two_step_prob": 1.0,
        "schedule.fake_steps_per_generator_step": 1}


def _lora_names(module: torch.nn.Module) -> set[str]:
    return {name for name, _ in module.named_parameters() if ".lora_" in name}


def test_only_adapter_parameters_get_gradients_and_optimizer_state(lake_dir, tiny_models, tmp_path):
    trainer = build_trainer(fixture_train_config(lake_dir, tiny_models, **LORA), tmp_path)
    transformer = trainer.generator.transformer
    adapters = _lora_names(transformer)
    assert adapters and {n for n, p in transformer.named_parameters() if p.requires_grad} == adapters
    assert not _lora_names(trainer.teacher.transformer) and not _lora_names(trainer.fake.transformer)
    base = {n: p.detach().clone() for n, p in transformer.named_parameters() if n not in adapters}
    trainer.train(until=3, progress=False)  # warmup, one-step and two-step phases
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in transformer.named_parameters() if n in adapters}
    assert len(trainer.optimizer.state) == len(adapters)
    assert all(torch.equal(p, base[n]) for n, p in transformer.named_parameters() if n in base)
    assert any(p.abs().sum() > 0 for n, p in transformer.named_parameters() if ".lora_B." in n)  # B left zero: moved


def test_a_lora_run_resumes_bit_exactly(lake_dir, tiny_models, tmp_path):
    config = fixture_train_config(lake_dir, tiny_models, **LORA, **{"schedule.total_steps": 4,
                                                                   "log.checkpoint_every": 2, "lora.fake_score": True})
    straight = build_trainer(config, tmp_path / "a")
    straight.train(progress=False)
    first = build_trainer(config, tmp_path / "b")
    first.train(until=2, progress=False)
    del first
    resumed = build_trainer(config, tmp_path / "b")
    assert resumed.resume() and resumed.step == 2
    resumed.train(progress=False)
    for name in ("generator", "fake"):
        a, b = (getattr(t, name).transformer.state_dict() for t in (straight, resumed))
        assert _lora_names(getattr(resumed, name).transformer)
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("backbone", ["generator", "omni", "klein"])  # tiny Z-Image (plain, omni), FLUX.2 klein
def test_the_saved_adapter_loads_into_diffusers_and_equals_the_merged_generator(lake_dir, tiny_models, tmp_path,
                                                                                backbone):
    import diffusers

    base = getattr(tiny_models, backbone)
    targets = load_config("klein_paper" if backbone == "klein" else "zimage_paper").lora.target_modules
    config = fixture_train_config(lake_dir, tiny_models, **LORA, **{"schedule.total_steps": 3,
                                                                   "model.generator": str(base),
                                                                   "lora.target_modules": targets})
    trainer = build_trainer(config, tmp_path)
    trainer.train(progress=False)
    checkpoint = latest_checkpoint(tmp_path)
    assert (checkpoint / "lora" / LORA_WEIGHTS).exists()
    pipeline = getattr(diffusers, trainer.generator.pipeline)

    def image(pipe) -> torch.Tensor:
        return pipe(prompt="a red circle on a blue background", height=64, width=64, num_inference_steps=2,
                    guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="pt").images

    # the checkpoint's own scheduler on both sides (a klein checkpoint carries the static shift it samples with)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(checkpoint / "generator", subfolder="scheduler")
    pipe = pipeline.from_pretrained(base, scheduler=scheduler)
    plain = image(pipe)
    pipe.load_lora_weights(checkpoint / "lora")
    adapted = image(pipe)
    merged = image(pipeline.from_pretrained(checkpoint / "generator"))
    assert (adapted - plain).abs().max() > 1e-3  # the adapter changes what the pipeline draws
    assert torch.allclose(adapted, merged, atol=1e-4)  # and the merged checkpoint draws the same


def test_bad_lora_settings_are_clear_errors(lake_dir, tiny_models):
    with pytest.raises(ValueError, match="lora.rank must be >= 0"):
        fixture_train_config(lake_dir, tiny_models, **{"lora.rank": -1})
