"""Build everything a run needs from a `TrainConfig` and train (the body of `npedit train`).

Multi-process: launched by torchrun, each rank reads its own shard of the snapshot; with more than one rank the
generator and fake-score transformers are sharded with FSDP2 (`fully_shard` per block). One CPU process is the same
code with world size 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from schemas.errors import ConfigError
from training.backbones import backbone_class
from training.config import TrainConfig, resolved_for
from training.critics import critic_class
from training.data import snapshot_batches
from training.trainer import Trainer


def resolve_model_paths(config: TrainConfig) -> tuple[str, str]:
    """The configured generator/critic, or the tiny zoo models when left empty."""
    if config.model.generator and config.model.critic:
        return config.model.generator, config.model.critic
    from model_zoo import build_tiny_models

    tiny = build_tiny_models()
    return config.model.generator or str(tiny.generator), config.model.critic or str(tiny.vlm)


def init_distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; initialises the process group when world size > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world_size


def training_device() -> torch.device:
    """This rank's accelerator (torchrun's LOCAL_RANK) or the CPU."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def transformer_sharder(compute_dtype: torch.dtype):
    """FSDP2: shard each transformer block, then the root; parameters stay float32 masters, compute in
    `compute_dtype`, gradients reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # inputs are cast by the backbone itself: FSDP's cast would also round the timestep to bf16
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)

    def shard(transformer: torch.nn.Module) -> None:
        for blocks in ("noise_refiner", "context_refiner", "layers",  # Z-Image
                       "transformer_blocks", "single_transformer_blocks"):  # FLUX.2
            for block in getattr(transformer, blocks, []):
                fully_shard(block, mp_policy=policy)
        fully_shard(transformer, mp_policy=policy)

    return shard


def build_trainer(config: TrainConfig, out_dir: Path, *, rank: int = 0, world_size: int = 1) -> Trainer:
    torch.manual_seed(config.seed)
    dtype = getattr(torch, config.model.dtype)  # compute dtype of the frozen models (and of FSDP2 compute)
    device = training_device()
    generator_path, critic_path = resolve_model_paths(config)
    backbone, critic_type = backbone_class(generator_path), critic_class(critic_path)  # before any weights load
    batches = snapshot_batches(config.data, seed=config.seed, rank=rank, world_size=world_size)
    generator = backbone.from_pretrained(generator_path, dtype=dtype, transformer_dtype=torch.float32)
    teacher_transformer = None
    if config.model.generator_init:
        teacher_transformer = generator.transformer
        generator = generator.with_transformer(starting_transformer(teacher_transformer, config.model.generator_init))
    if config.model.gradient_checkpointing:
        generator.transformer.enable_gradient_checkpointing()
    critic = critic_type.from_pretrained(critic_path, dtype=dtype).to(device)
    shard = None
    if world_size > 1:
        shard = transformer_sharder(dtype)
        generator.compute_dtype = dtype
    return Trainer(config, generator.to(device), critic, batches, out_dir, shard=shard,
                   teacher_transformer=None if teacher_transformer is None else teacher_transformer.to(device))


def starting_transformer(teacher: torch.nn.Module, path: str) -> torch.nn.Module:
    """The editor's starting transformer (`model.generator_init`): the teacher's class and config, another checkpoint's
    weights (its `transformer/` folder, or a hub id's), in float32 for training."""
    try:
        config = type(teacher).load_config(path, subfolder="transformer")
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"model.generator_init: no transformer loads from {path!r}: {reason}") from None
    differs = sorted(key for key in {**config, **teacher.config} if not key.startswith("_")
                     and config.get(key) != teacher.config.get(key))
    if differs or config.get("_class_name", type(teacher).__name__) != type(teacher).__name__:
        raise ConfigError(f"model.generator_init: {path!r} is not model.generator's architecture "
                          f"({config.get('_class_name')}; differing: {', '.join(differs[:5]) or 'none'})")
    return type(teacher).from_pretrained(path, subfolder="transformer", torch_dtype=torch.float32)


def describe_run(trainer: Trainer, world_size: int) -> str:
    """What a run trains on, in a few lines: global batch, edit-type mix, where removal questions get their object."""
    data = trainer.config.data
    mix = ", ".join(f"{t} {share:.1%}" for t, share in trainer.batches.realised_mix().items())
    dataset = trainer.batches.dataset
    sources = dataset.removal_targets()
    if data.customization_fraction and dataset.customizations:
        task = (f"customization: {dataset.customizations} samples (object-centric images x background prompts), "
                f"{data.customization_fraction:.0%} of each epoch\n")
    elif data.customization_fraction:
        task = (f"customization: snapshot {dataset.snapshot_id} has no object-centric images with background prompts; "
                "training editing alone\n")
    else:
        task = ""
    return (f"global batch {data.global_batch_size} = {data.batch_size} per rank x {world_size} ranks x "
            f"{trainer.accumulation} accumulation steps\n"
            f"edit types per epoch (rank 0): {mix}\n{task}"
            f"removal objects: {sources['column']} from target_object, {sources['phrasing']} from the instruction's "
            f"phrasing, {sources['none']} not found (asked the general edit question)")


def run_training(config: TrainConfig, out_dir: Path | None = None, *, resume: bool = True,
                 until: int | None = None) -> Trainer:
    """Train from the configured snapshot; a run with checkpoints in `out_dir` continues from the latest one."""
    out_dir = Path(out_dir or config.log.out_dir)
    rank, world_size = init_distributed()
    config = resolved_for(config, world_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(config.to_json())
    trainer = build_trainer(config, out_dir, rank=rank, world_size=world_size)
    if rank == 0:
        print(describe_run(trainer, world_size), flush=True)
    if resume:
        trainer.resume()
    trainer.train(until=until, progress=rank == 0)
    return trainer
