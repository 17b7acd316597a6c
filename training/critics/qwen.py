"""Qwen2-VL / Qwen2.5-VL as the frozen critic: differentiable preprocessing and teacher-forced Yes/No logits.

The HF image processor works on PIL/numpy and is not differentiable; `qwen_pixel_values` redoes Qwen2-VL's
preprocessing in torch (resize to the processor's grid, normalise, duplicate in time, cut into patches), so the
critic's gradient reaches the generated pixels. It is bit-exact with the processor when no resize is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from model_zoo.qwen_vl import QWEN_VL_MODEL_TYPES
from training.critics.base import ChatCritic, left_padded


@dataclass(frozen=True)
class QwenGeometry:
    patch: int
    merge: int
    temporal: int
    min_pixels: int
    max_pixels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor) -> QwenGeometry:
        ip = processor.image_processor
        return cls(ip.patch_size, ip.merge_size, ip.temporal_patch_size, ip.size.shortest_edge, ip.size.longest_edge,
                   tuple(ip.image_mean), tuple(ip.image_std))


def qwen_pixel_values(image01: torch.Tensor, geometry: QwenGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(3,H,W) in [0,1] -> (patches, C*T*P*P) and grid (1,3), laid out exactly as the Qwen2-VL processor does."""
    _, height, width = image01.shape
    factor = geometry.patch * geometry.merge
    h, w = smart_resize(height, width, factor=factor, min_pixels=geometry.min_pixels, max_pixels=geometry.max_pixels)
    if (h, w) != (height, width):
        image01 = F.interpolate(image01[None], size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0]
        image01 = image01.clamp(0, 1)  # PIL resizes 8-bit images, so bicubic overshoot saturates there too
    mean = torch.tensor(geometry.mean, dtype=image01.dtype, device=image01.device)[:, None, None]
    std = torch.tensor(geometry.std, dtype=image01.dtype, device=image01.device)[:, None, None]
    x = ((image01 - mean) / std).unsqueeze(0).expand(geometry.temporal, -1, -1, -1)  # (T,C,h,w): a still "clip"
    p, m, t = geometry.patch, geometry.merge, geometry.temporal
    gh, gw = h // p, w // p
    x = x.reshape(1, t, 3, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # grid-major, merge window next, then channel, time, pixel rows/cols
    patches = x.reshape(gh * gw, 3 * t * p * p)
    return patches, torch.tensor([[1, gh, gw]], device=image01.device)


class QwenVLCritic(ChatCritic):
    """Qwen2-VL / Qwen2.5-VL as a frozen, differentiable Yes/No critic (tiny or real: same code)."""

    model_types = QWEN_VL_MODEL_TYPES

    def __init__(self, model, processor):
        super().__init__(model, processor)
        self.geometry = QwenGeometry.from_processor(processor)

    def answer_logits(self, images: list[list[torch.Tensor]], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        patches, grids, prompts = [], [], []
        image_token = self.processor.image_token
        for sample_images, text in zip(images, texts):
            prompt = self.prompt(len(sample_images), text)
            for image in sample_images:
                pixels, grid = qwen_pixel_values(((image.float() + 1) / 2).clamp(0, 1), self.geometry)
                patches.append(pixels)
                grids.append(grid)
                tokens = int(grid.prod()) // self.geometry.merge**2
                prompt = prompt.replace(image_token, "<|placeholder|>" * tokens, 1)
            prompts.append(prompt.replace("<|placeholder|>", image_token))
        batch = left_padded(self.processor.tokenizer, prompts, device)
        output = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            mm_token_type_ids=(batch.input_ids == self.model.config.image_token_id).long(),  # drives 3-D RoPE
            pixel_values=torch.cat(patches).to(device=device, dtype=dtype),
            image_grid_thw=torch.cat(grids).to(device),
            logits_to_keep=1,
        )
        logits = output.logits[:, -1].float()
        return logits[:, self.yes_id], logits[:, self.no_id]
