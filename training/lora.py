"""LoRA adapters (peft, through diffusers' `add_adapter`) on a backbone's transformer, and their two exports: the
adapter alone in diffusers' LoRA format (`pipe.load_lora_weights(dir)` loads it), and the weights with the adapter
merged in (a plain checkpoint every loader reads). Both are computed from a full state dict, so they work the same
on weights gathered from FSDP shards."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig

from training.config import LoraConfig

ADAPTER = "default"  # the adapter's name inside peft layers
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name for a LoRA


def add_lora(transformer: torch.nn.Module, config: LoraConfig) -> None:
    """Wrap the target modules with trainable rank-`config.rank` adapters; every other weight is frozen. The adapters
    start at zero (B = 0), so the wrapped model computes exactly what it did."""
    transformer.add_adapter(PeftLoraConfig(r=config.rank, lora_alpha=config.alpha or config.rank,
                                           target_modules=list(config.target_modules), init_lora_weights=True),
                            adapter_name=ADAPTER)
    for name, parameter in transformer.named_parameters():
        parameter.requires_grad_(".lora_" in name)


def lora_scale(transformer: torch.nn.Module) -> float | None:
    """alpha / rank of the transformer's adapter, or None when it has none."""
    config = getattr(transformer, "peft_config", {}).get(ADAPTER)
    return None if config is None else config.lora_alpha / config.r


def merged_state(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A LoRA-wrapped transformer's state dict as the plain transformer's: W + scale * B @ A per wrapped layer."""
    merged = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            prefix, leaf = key.split(".base_layer.")
            if leaf == "weight":
                down, up = state[f"{prefix}.lora_A.{ADAPTER}.weight"], state[f"{prefix}.lora_B.{ADAPTER}.weight"]
                value = value + scale * (up.float() @ down.float()).to(value.dtype)
            key = f"{prefix}.{leaf}"
        merged[key] = value
    return merged


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's weights keyed as diffusers' LoRA loaders expect them under `transformer.` (peft's names
    without the adapter name)."""
    return {key.replace(f".{ADAPTER}.", "."): value for key, value in state.items() if ".lora_" in key}


def save_lora(state: dict[str, torch.Tensor], transformer: torch.nn.Module, out_dir: Path, pipeline: str) -> Path:
    """Write the adapter of a full state dict in diffusers' LoRA format for `pipeline` (a diffusers pipeline class
    name), with its rank and alpha as metadata."""
    import diffusers

    config = transformer.peft_config[ADAPTER]
    metadata = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    getattr(diffusers, pipeline).save_lora_weights(out_dir, transformer_lora_layers=adapter_state(state),
                                                   transformer_lora_adapter_metadata=metadata)
    return Path(out_dir) / LORA_WEIGHTS
