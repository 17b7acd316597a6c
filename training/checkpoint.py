"""Checkpoints: the generator in diffusers layout (what `npedit edit` loads), state for exact resume, config.

One process writes full state dicts with `torch.save`. Several processes (FSDP2) write sharded state with
`torch.distributed.checkpoint` (each rank its own shards, nothing gathered in one host's memory, a shared filesystem
assumed) and rank 0 exports the generator's gathered weights. Either way a checkpoint is staged, then renamed: a
killed save never leaves a half checkpoint marked latest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from schemas.errors import Refused
from training.lora import lora_scale, merged_state, save_lora

LATEST = "latest"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
Models = dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step:07d}"


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights keyed by parameter name (a collective under FSDP; complete on rank 0)."""
    return get_model_state_dict(model, options=FULL)


def _stepped(models: Models) -> list[str]:
    """Models whose optimizer has state (one that never stepped has none; exporting it would make torch take a
    dummy step and shift Adam's step count)."""
    return [name for name, (_, optimizer) in models.items() if optimizer.state]


def _states(models: Models, options: StateDictOptions, with_optimizer: list[str]) -> dict:
    state = {}
    for name, (model, optimizer) in models.items():
        optimizers = [optimizer] if name in with_optimizer else []
        state[name], state[f"{name}_optimizer"] = get_state_dict(model, optimizers, options=options)
    return state


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(out_dir: Path, step: int, generator, models: Models, meta: dict, config_json: str, *,
                    keep: int = 3, rank: int = 0, world_size: int = 1) -> Path:
    """Stage, write and publish one checkpoint; every rank calls this. Only the newest `keep` are kept."""
    final = checkpoint_dir(out_dir, step)
    staging = final.with_name(final.name + ".partial")
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    _barrier()
    stepped = _stepped(models)
    if world_size > 1:
        dcp.save(_states(models, StateDictOptions(), stepped), checkpoint_id=str(staging / "sharded"))
        payload = {"meta": meta, "sharded": True, "optimizers": stepped}
    else:
        payload = {"meta": meta, "sharded": False, "optimizers": stepped, **_states(models, FULL, stepped)}
    generator_weights = full_model_state(models["generator"][0])
    scale = lora_scale(models["generator"][0])
    if rank == 0:
        if scale is not None:  # LoRA: the adapter in diffusers' format, and the generator with it merged
            save_lora(generator_weights, models["generator"][0], staging / "lora", generator.pipeline)
            generator_weights = merged_state(generator_weights, scale)
        generator.save_pretrained(staging / "generator", transformer_state_dict=generator_weights,
                                  frozen_dir=out_dir / "frozen_components")
        torch.save(payload, staging / "state.pt")
        (staging / "config.json").write_text(config_json)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        pointer = out_dir / "checkpoints" / LATEST
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(final.name)
        os.replace(tmp, pointer)
        for old in complete_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, models: Models, world_size: int = 1) -> dict:
    """Load weights and optimizer states into `models` (sharded or full, as written); returns the run's meta.
    A checkpoint resumes only with as many ranks as wrote it (each rank's RNG and data position are in it)."""
    payload = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    written_by = len(payload["meta"]["ranks"])
    if written_by != world_size:
        raise Refused(f"{path} was written by {written_by} ranks; resume with as many (this run has {world_size})")
    if payload["sharded"]:
        # templates for the saved optimizers are built (zero-initialised) here, then overwritten by the load
        state = _states(models, StateDictOptions(), payload["optimizers"])
        dcp.load(state, checkpoint_id=str(path / "sharded"))
        options = StateDictOptions()
    else:
        state, options = payload, StateDictOptions(full_state_dict=True)
    for name, (model, optimizer) in models.items():
        optim_state = state.get(f"{name}_optimizer") or {}
        set_state_dict(model, [optimizer] if optim_state else [], model_state_dict=state[name],
                       optim_state_dict=optim_state, options=options)
    return payload["meta"]


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = out_dir / "checkpoints"
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if not p.name.endswith(".partial") and (p / "state.pt").exists())


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint `latest` names, else the newest complete one; None only when there is none at all."""
    pointer = out_dir / "checkpoints" / LATEST
    if pointer.exists():
        path = pointer.parent / pointer.read_text().strip()
        if (path / "state.pt").exists():
            return path
    complete = complete_checkpoints(out_dir)
    return complete[-1] if complete else None
