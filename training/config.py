"""Training configuration: frozen dataclasses per component composed into `TrainConfig`, plus named recipes."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.dataclass_io import from_dict, replace_path
from schemas.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    generator: str = ""  # diffusers-layout Z-Image path or hub id; "" = the tiny zoo model
    critic: str = ""  # Qwen2.5-VL path or hub id; "" = the tiny zoo model
    dtype: str = "float32"
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class DataConfig:
    lake_dir: str = "corpus_lake"
    catalog: str | None = None  # e.g. "postgres:dbname=npedit host=db"; default: the file in lake_dir
    data_path: str | None = None  # where the Parquet files live; default: lake_dir/data/
    snapshot: str | None = None  # id or tag; None = latest
    resolution: int = 64  # side of the square-equivalent training area; buckets keep ~resolution^2 pixels
    aspect_ratios: tuple[float, ...] = (1.0,)  # width / height of the resolution buckets
    batch_size: int = 2
    include_invalid: bool = False


@dataclass(frozen=True)
class LossConfig:
    lambda_vlm: float = 0.01
    lambda_dmd: float = 0.5
    lambda_reconstruction: float = 1.0
    do_nothing_prob: float = 0.01
    cfg_scale: float = 3.5
    strong_cfg_scale: float = 7.5
    strong_cfg_edit_types: tuple[str, ...] = ("remove", "shape_change", "style")
    negative_prompt: str = "low quality, artifacts"
    dmd_t_min: float = 0.02
    dmd_t_max: float = 0.98
    critic_temperature_ramp_steps: int = 0  # 0: temperature 1 from the start


@dataclass(frozen=True)
class ScheduleConfig:
    total_steps: int = 10_000
    warmup_steps: int = 250  # identity reconstruction
    single_step_steps: int = 4_000  # after warmup: one-step unroll only
    two_step_prob: float = 0.75
    two_step_times: tuple[float, ...] = (0.75, 0.5, 0.25)  # un-shifted; the backbone's time shift is applied
    fake_steps_per_generator_step: int = 10


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-5
    fake_lr: float = 2e-5
    betas: tuple[float, float] = (0.0, 0.9)
    weight_decay: float = 0.0
    grad_clip: float = 2.0
    skip_grad_norm_above: float = 300.0


@dataclass(frozen=True)
class LogConfig:
    out_dir: str = "runs/npedit"
    log_every: int = 10
    image_every: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 3


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0

    def __post_init__(self):
        s = self.schedule
        if s.total_steps < 1 or s.fake_steps_per_generator_step < 0 or not 0 <= s.two_step_prob <= 1:
            raise ConfigError("schedule: total_steps >= 1, fake_steps_per_generator_step >= 0, 0 <= two_step_prob <= 1")
        if not all(0 < t < 1 for t in s.two_step_times):
            raise ConfigError("schedule.two_step_times must lie strictly between 0 and 1")
        if self.data.resolution % 16:
            raise ConfigError(f"data.resolution must be a multiple of 16, not {self.data.resolution}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def debug_tiny() -> TrainConfig:
    """CPU seconds: tiny models, 64 px, a few steps through every phase (warmup, one-step, two-step)."""
    return TrainConfig(
        data=DataConfig(resolution=64, batch_size=2),
        loss=LossConfig(do_nothing_prob=0.1),
        schedule=ScheduleConfig(total_steps=8, warmup_steps=2, single_step_steps=2, fake_steps_per_generator_step=1),
        optim=OptimConfig(lr=1e-4, fake_lr=1e-4, skip_grad_norm_above=1e4),  # random tiny weights: large norms
        log=LogConfig(out_dir="runs/debug_tiny", log_every=1, image_every=4, checkpoint_every=4),
    )


def zimage_multigpu() -> TrainConfig:
    """The paper's hyperparameters on real weights (Z-Image base + Qwen2.5-VL-7B), for torchrun on 8+ GPUs.

    Not run in CI: documented here so a GPU user runs exactly this. Weights are hub ids resolved by diffusers /
    transformers on a machine that can reach the hub (or local paths).
    """
    return TrainConfig(
        model=ModelConfig(generator="Tongyi-MAI/Z-Image", critic="Qwen/Qwen2.5-VL-7B-Instruct", dtype="bfloat16",
                          gradient_checkpointing=True),
        data=DataConfig(resolution=512, aspect_ratios=(0.75, 1.0, 1.333), batch_size=1),
        loss=LossConfig(lambda_vlm=0.01, lambda_dmd=0.5, critic_temperature_ramp_steps=2000),
        schedule=ScheduleConfig(total_steps=10_000, warmup_steps=250, single_step_steps=4_000,
                                fake_steps_per_generator_step=10),
        optim=OptimConfig(lr=2e-5, fake_lr=2e-5),
        log=LogConfig(out_dir="runs/zimage_multigpu", log_every=10, image_every=250, checkpoint_every=500),
    )


RECIPES = {"debug_tiny": debug_tiny, "zimage_multigpu": zimage_multigpu}


def load_config(recipe: str = "debug_tiny", toml: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A recipe, then a TOML file's tables on top, then `a.b=value` overrides."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    config = RECIPES[recipe]()
    if toml is not None:
        merged = asdict(config)
        try:
            sections = tomllib.loads(Path(toml).read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{toml}: not valid TOML: {error}") from None
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(merged.get(section), dict):
                merged[section].update(values)
            else:
                merged[section] = values
        config = from_dict(TrainConfig, merged, str(toml))
    for key, value in (overrides or {}).items():
        config = replace_path(config, key, value)
    TrainConfig.__post_init__(config)
    return config


def config_from_json(text: str) -> TrainConfig:
    return from_dict(TrainConfig, json.loads(text), "config.json")
