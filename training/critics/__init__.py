"""Frozen VLM critics behind one protocol: Qwen2-VL/2.5-VL and LLaVA-OneVision (the paper's family)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig

from schemas.errors import ConfigError
from training.critics.base import Critic
from training.critics.llava_onevision import LlavaOnevisionCritic
from training.critics.qwen import QwenGeometry, QwenVLCritic, qwen_pixel_values


CRITICS = {"llava_onevision": LlavaOnevisionCritic, "qwen2_vl": QwenVLCritic, "qwen2_5_vl": QwenVLCritic}


def critic_class(path: str | Path) -> type:
    """The critic class for a checkpoint's model type, from its config alone (no weights are read)."""
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.critic: cannot read a model config from {str(path)!r} "
                          f"({str(error).splitlines()[0]})") from None
    if model_type not in CRITICS:
        raise ConfigError(f"model.critic: no critic for model type {model_type!r}: use Qwen2-VL/2.5-VL or "
                          "LLaVA-OneVision")
    return CRITICS[model_type]


def load_critic(path: str | Path, *, dtype: torch.dtype = torch.float32):
    """The critic for a checkpoint's model type, loaded by path or hub id."""
    return critic_class(path).from_pretrained(path, dtype=dtype)


__all__ = [
    "CRITICS",
    "Critic",
    "critic_class",
    "LlavaOnevisionCritic",
    "QwenGeometry",
    "QwenVLCritic",
    "load_critic",
    "qwen_pixel_values",
]
