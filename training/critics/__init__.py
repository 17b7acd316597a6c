"""Frozen VLM critics behind one protocol: Qwen2-VL/2.5-VL and LLaVA-OneVision (the paper's family)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig

from schemas.errors import ConfigError
from training.critics.base import Critic
from training.critics.llava_onevision import LlavaOnevisionCritic
from training.critics.qwen import QwenGeometry, QwenVLCritic, qwen_pixel_values


def load_critic(path: str | Path, *, dtype: torch.dtype = torch.float32):
    """The critic class for a checkpoint's model type, loaded by path or hub id."""
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type == "llava_onevision":
        return LlavaOnevisionCritic.from_pretrained(path, dtype=dtype)
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        return QwenVLCritic.from_pretrained(path, dtype=dtype)
    raise ConfigError(f"no critic for model type {model_type!r}: use Qwen2-VL/2.5-VL or LLaVA-OneVision")


__all__ = ["Critic", "LlavaOnevisionCritic", "QwenGeometry", "QwenVLCritic", "load_critic", "qwen_pixel_values"]
