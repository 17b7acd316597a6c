"""Training configuration: frozen dataclasses per component composed into `TrainConfig`, plus named recipes."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from schemas.dataclass_io import check_types, from_dict, replace_path
from schemas.edit_types import EDIT_TYPES
from schemas.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
WARMUP_TEXTS = ("do_nothing", "reference_caption")


@dataclass(frozen=True)
class ModelConfig:
    generator: str = ""  # diffusers-layout Z-Image path or hub id; "" = the tiny zoo model
    # Where the editor's weights start when not at the teacher's (the reference code's init_ckpt_student): a checkpoint
    # of model.generator's architecture, e.g. an identity-warmup or supervised editor. "" = model.generator. The
    # teacher and the fake score always start from model.generator.
    generator_init: str = ""
    critic: str = ""  # Qwen2-VL/2.5-VL or LLaVA-OneVision path or hub id; "" = the tiny zoo model
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
    batch_size: int = 2  # per rank and forward pass
    global_batch_size: int | None = None  # per optimizer step, all ranks; None = batch_size x ranks (no accumulation)
    # Share of each edit type in an epoch; types present but not named split what is left equally ({} = uniform).
    edit_type_weights: dict[str, float] = field(default_factory=dict)
    include_invalid: bool = False
    # Share of each epoch given to subject customization (object-centric images x their background prompts, see
    # training.customization); the edit types split the rest by their weights. 0: editing alone.
    customization_fraction: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    lambda_vlm: float = 0.01
    lambda_dmd: float = 0.5
    lambda_reconstruction: float = 1.0
    # Paper appendix C (figure 9): a distance between the output and its reference, on edit samples, trades edit
    # success for consistency. The paper's is LPIPS; ours the pixel MSE (images in [-1, 1]). 0: off, as in the paper.
    lambda_consistency: float = 0.0
    do_nothing_prob: float = 0.01
    cfg_scale: float = 3.5
    strong_cfg_scale: float = 7.5
    strong_cfg_edit_types: tuple[str, ...] = ("remove", "shape_change", "style")
    negative_prompt: str = "low quality, artifacts"
    dmd_t_min: float = 0.02
    dmd_t_max: float = 0.98
    # From the reference reimplementation, not the paper: the critic's logits are scaled by T rising linearly from
    # 0.1 to 1 over this many VLM steps, counted from the first step after the identity warmup. 0: T = 1 throughout.
    critic_temperature_ramp_steps: int = 0
    # An ablation switch: False asks only the edit question (no identity-preservation question).
    identity_question: bool = True


@dataclass(frozen=True)
class ScheduleConfig:
    total_steps: int = 10_000
    warmup_steps: int = 250  # identity reconstruction
    # What the identity warmup conditions the copy on: "do_nothing" (one fixed instruction) or "reference_caption"
    # (the source's own caption, as the reference reimplementation's stage 0; a sample without one falls back to
    # "do nothing"). Either erases what an editor that already edits knows (world findings 33-34).
    warmup_text: str = "do_nothing"
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
class LoraConfig:
    """Train LoRA adapters (peft) instead of every weight: rank 0 fine-tunes the whole generator."""

    rank: int = 0
    alpha: float | None = None  # None: alpha = rank (a scale of 1)
    # the attention projections (of FLUX.2's double-stream blocks; add "to_qkv_mlp_proj" for its single-stream ones)
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    fake_score: bool = False  # the fake score trains adapters too (else all its weights)


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
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0

    def __post_init__(self):
        check_types(self)
        for where, holds, requirement in _rules(self):
            if not holds:
                raise ConfigError(f"{where} {requirement}, not {_value_at(self, where)!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _value_at(config: TrainConfig, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _rules(c: TrainConfig) -> list[tuple[str, bool, str]]:
    """(field, holds, what it must be): every range a config is checked against when it is resolved."""
    d, loss, s, o, log = c.data, c.loss, c.schedule, c.optim, c.log
    weights = d.edit_type_weights
    return [
        ("model.dtype", c.model.dtype in DTYPES, f"must be one of {', '.join(DTYPES)}"),
        ("data.resolution", d.resolution >= 16 and d.resolution % 16 == 0, "must be a positive multiple of 16"),
        ("data.aspect_ratios", bool(d.aspect_ratios) and all(a > 0 for a in d.aspect_ratios), "must be > 0"),
        ("data.batch_size", d.batch_size >= 1, "must be >= 1"),
        ("data.global_batch_size", d.global_batch_size is None or d.global_batch_size % d.batch_size == 0
         and d.global_batch_size >= 1, "must be a positive multiple of data.batch_size"),
        ("data.edit_type_weights", set(weights) <= set(EDIT_TYPES),
         f"may only name edit types ({', '.join(EDIT_TYPES)})"),
        ("data.edit_type_weights", all(0 <= w <= 1 for w in weights.values()) and sum(weights.values()) <= 1 + 1e-9,
         "must be probabilities summing to at most 1"),
        ("data.customization_fraction", 0 <= d.customization_fraction < 1, "must lie in [0, 1)"),
        *[(f"loss.{name}", getattr(loss, name) >= 0, "must be >= 0")
          for name in ("lambda_vlm", "lambda_dmd", "lambda_reconstruction", "lambda_consistency", "cfg_scale",
                       "strong_cfg_scale", "critic_temperature_ramp_steps")],
        ("loss.do_nothing_prob", 0 <= loss.do_nothing_prob <= 1, "must lie in [0, 1]"),
        ("loss.strong_cfg_edit_types", set(loss.strong_cfg_edit_types) <= set(EDIT_TYPES),
         f"may only name edit types ({', '.join(EDIT_TYPES)})"),
        ("loss.dmd_t_min", 0 < loss.dmd_t_min < 1, "must lie in (0, 1)"),
        ("loss.dmd_t_max", loss.dmd_t_min < loss.dmd_t_max < 1, "must lie in (loss.dmd_t_min, 1)"),
        ("schedule.total_steps", s.total_steps >= 1, "must be >= 1"),
        *[(f"schedule.{name}", getattr(s, name) >= 0, "must be >= 0")
          for name in ("warmup_steps", "single_step_steps", "fake_steps_per_generator_step")],
        ("schedule.warmup_text", s.warmup_text in WARMUP_TEXTS, f"must be one of {', '.join(WARMUP_TEXTS)}"),
        ("schedule.two_step_prob", 0 <= s.two_step_prob <= 1, "must lie in [0, 1]"),
        ("schedule.two_step_times", bool(s.two_step_times) and all(0 < t < 1 for t in s.two_step_times),
         "must lie strictly between 0 and 1"),
        *[(f"optim.{name}", getattr(o, name) > 0, "must be > 0")
          for name in ("lr", "fake_lr", "grad_clip", "skip_grad_norm_above")],
        ("optim.betas", all(0 <= b < 1 for b in o.betas), "must lie in [0, 1)"),
        ("optim.weight_decay", o.weight_decay >= 0, "must be >= 0"),
        *[(f"log.{name}", getattr(log, name) >= 1, "must be >= 1")
          for name in ("log_every", "image_every", "checkpoint_every", "keep_checkpoints")],
        ("lora.rank", c.lora.rank >= 0, "must be >= 0 (0: full fine-tuning)"),
        ("lora.alpha", c.lora.alpha is None or c.lora.alpha > 0, "must be > 0"),
        ("lora.target_modules", bool(c.lora.target_modules), "must name at least one module"),
        ("seed", c.seed >= 0, "must be >= 0"),
    ]


def accumulation_steps(data: DataConfig, world_size: int) -> int:
    """Forward/backward passes per optimizer step so that batch_size x ranks x passes = global_batch_size."""
    if data.global_batch_size is None:
        return 1
    per_pass = data.batch_size * world_size
    if data.global_batch_size % per_pass:
        raise ConfigError(f"data.global_batch_size {data.global_batch_size} is not a multiple of data.batch_size "
                          f"{data.batch_size} x {world_size} ranks")
    return data.global_batch_size // per_pass


def resolved_for(config: TrainConfig, world_size: int) -> TrainConfig:
    """The config with its global batch stated for this world size (what a run writes and logs)."""
    steps = accumulation_steps(config.data, world_size)
    return replace_path(config, "data.global_batch_size", config.data.batch_size * world_size * steps)


def debug_tiny() -> TrainConfig:
    """CPU seconds: tiny models, 64 px, a few steps through every phase (warmup, one-step, two-step)."""
    return TrainConfig(
        data=DataConfig(resolution=64, batch_size=2),
        loss=LossConfig(do_nothing_prob=0.1),
        schedule=ScheduleConfig(total_steps=8, warmup_steps=2, single_step_steps=2, fake_steps_per_generator_step=1),
        optim=OptimConfig(lr=1e-4, fake_lr=1e-4, skip_grad_norm_above=1e4),  # random tiny weights: large norms
        log=LogConfig(out_dir="runs/debug_tiny", log_every=1, image_every=4, checkpoint_every=4),
    )


def zimage_paper() -> TrainConfig:
    """The paper's settings (NP-Edit, appendix E.1 and section 4) on Z-Image base, for torchrun on 8+ GPUs.

    Paper: Adam, lr 2e-6, beta1 0, batch 32; LLaVA-OneVision-7B critic; 250 identity-warmup steps, 4K single-step
    steps, ~10K steps; lambda_VLM 0.01, lambda_DMD 0.5; 10 fake-score updates per generator step; second unroll
    t in {0.25, 0.5, 0.75}. Not stated in the paper, taken from the reference reimplementation: beta2 0.9, the fake
    score's lr (= the generator's), CFG 3.5 / 7.5 with "low quality, artifacts", DMD t in [0.02, 0.98]. Types are
    balanced (the paper balances them when proposing edits). Batch 1 per GPU, accumulated to 32.
    Not run in CI; weights are hub ids resolved on a machine that can reach the hub (or local paths).
    """
    return TrainConfig(
        model=ModelConfig(generator="Tongyi-MAI/Z-Image", critic="llava-hf/llava-onevision-qwen2-7b-ov-hf",
                          dtype="bfloat16", gradient_checkpointing=True),
        data=DataConfig(resolution=512, aspect_ratios=(0.75, 1.0, 1.333), batch_size=1, global_batch_size=32),
        loss=LossConfig(lambda_vlm=0.01, lambda_dmd=0.5),
        schedule=ScheduleConfig(total_steps=10_000, warmup_steps=250, single_step_steps=4_000,
                                fake_steps_per_generator_step=10),
        optim=OptimConfig(lr=2e-6, fake_lr=2e-6),
        log=LogConfig(out_dir="runs/zimage_paper", log_every=10, image_every=250, checkpoint_every=500),
    )


def zimage_reimplementation() -> TrainConfig:
    """The first author's public reimplementation on Z-Image (its main-stage config), where it differs from the paper.

    lr 2e-5 at batch 8, lambda_VLM 0.02 / lambda_DMD 1.0 (the paper's ratio, twice the scale), 5 fake-score updates,
    two-step unrolls from the start, the critic temperature ramp over 2000 steps, removal at 25 % of edits, and its
    separate 5000-step identity stage, conditioned on the source's caption, run here as the warmup. Its critic
    (InternVL3-14B) is not supported here; this recipe uses Qwen2.5-VL-7B.
    """
    return TrainConfig(
        model=ModelConfig(generator="Tongyi-MAI/Z-Image", critic="Qwen/Qwen2.5-VL-7B-Instruct", dtype="bfloat16",
                          gradient_checkpointing=True),
        data=DataConfig(resolution=512, aspect_ratios=(0.75, 1.0, 1.333), batch_size=1, global_batch_size=8,
                        edit_type_weights={"remove": 0.25}),
        loss=LossConfig(lambda_vlm=0.02, lambda_dmd=1.0, critic_temperature_ramp_steps=2000),
        schedule=ScheduleConfig(total_steps=19_000, warmup_steps=5_000, warmup_text="reference_caption",
                                single_step_steps=0, fake_steps_per_generator_step=5),
        optim=OptimConfig(lr=2e-5, fake_lr=2e-5),
        log=LogConfig(out_dir="runs/zimage_reimplementation", log_every=10, image_every=250, checkpoint_every=500),
    )


def klein_paper() -> TrainConfig:
    """The paper's settings (as `zimage_paper`) on FLUX.2 klein base 4B (Apache-2.0, undistilled: the variant Black
    Forest Labs recommends for fine-tuning; its reference image conditions natively), with LoRA adapters of rank 64
    on the generator, for torchrun on 8+ GPUs. Not run in CI; the hub id resolves on a machine that can reach it."""
    paper = zimage_paper()
    return TrainConfig(
        model=ModelConfig(generator="black-forest-labs/FLUX.2-klein-base-4B", critic=paper.model.critic,
                          dtype="bfloat16", gradient_checkpointing=True),
        data=paper.data, loss=paper.loss, schedule=paper.schedule,
        optim=OptimConfig(lr=1e-4, fake_lr=2e-6),  # adapters take a larger step than full weights
        lora=LoraConfig(rank=64, target_modules=("to_q", "to_k", "to_v", "to_out.0", "to_qkv_mlp_proj")),
        log=LogConfig(out_dir="runs/klein_paper", log_every=10, image_every=250, checkpoint_every=500),
    )


def world_cpu() -> TrainConfig:
    """The proof world on a CPU (`npedit world build` / `npedit world experiment`): the world's teacher, critic and
    corpus by path, 64 px, batch 8. The paper's loss weights and schedule shape, shortened: 50 identity-warmup steps,
    200 single-step steps, then two-step unrolls; 2 fake-score updates per generator step; lr 1e-4 (Adam) for
    models of a few million parameters."""
    return TrainConfig(
        model=ModelConfig(generator="world_models/teacher", critic="world_models/critic"),
        data=DataConfig(lake_dir="world_corpus", resolution=64, batch_size=8),
        loss=LossConfig(lambda_vlm=0.01, lambda_dmd=0.5),
        schedule=ScheduleConfig(total_steps=600, warmup_steps=50, single_step_steps=200,
                                fake_steps_per_generator_step=2),
        optim=OptimConfig(lr=1e-4, fake_lr=1e-4),
        log=LogConfig(out_dir="runs/world_cpu", log_every=10, image_every=100, checkpoint_every=100),
    )


RECIPES = {"debug_tiny": debug_tiny, "world_cpu": world_cpu, "zimage_paper": zimage_paper,
           "zimage_reimplementation": zimage_reimplementation, "klein_paper": klein_paper}


def load_config(recipe: str = "debug_tiny", toml: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A recipe, then a TOML file's tables on top, then `a.b=value` overrides; validated once, when all are applied."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    merged = asdict(RECIPES[recipe]())
    if toml is not None:
        try:
            sections = tomllib.loads(Path(toml).read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{toml}: not valid TOML: {error}") from None
        for section, values in sections.items():
            known = merged.get(section)
            if section not in merged or isinstance(values, dict) != isinstance(known, dict):
                raise ConfigError(f"{toml}: unknown key {section!r} (known: {', '.join(sorted(merged))})")
            if isinstance(values, dict):
                unknown = sorted(set(values) - set(known))
                if unknown:
                    raise ConfigError(f"{toml}: unknown key {unknown[0]!r} in [{section}] "
                                      f"(known: {', '.join(sorted(known))})")
                known.update(values)
            else:
                merged[section] = values
    for key, value in (overrides or {}).items():
        section, _, leaf = key.rpartition(".")
        if key not in _FIELD_PATHS:
            raise ConfigError(f"no config field {key!r}")
        (merged[section] if section else merged)[leaf] = value
    return from_dict(TrainConfig, merged, "")


_SECTIONS = {name: hint for name, hint in get_type_hints(TrainConfig).items() if is_dataclass(hint)}
_FIELD_PATHS = {f"{name}.{f.name}" for name, hint in _SECTIONS.items() for f in fields(hint)} | {
    f.name for f in fields(TrainConfig) if f.name not in _SECTIONS}


def config_from_json(text: str) -> TrainConfig:
    return from_dict(TrainConfig, json.loads(text), "config.json")
