"""LLaVA-OneVision (the paper's critic family) as the frozen critic, with its preprocessing redone in torch.

One image per prompt uses "anyres": the whole image squashed to one crop, plus crops of the image resized (aspect
kept) onto the best-fitting grid and zero-padded. Several images per prompt use one crop each, padded to a square
with the mean colour. Token counts come from the processor's own arithmetic, so prompts match it exactly.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.image_transforms import divide_to_patches

from training.critics.base import ChatCritic, left_padded


def _resize(image01: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(image01.shape[-2:]) == (height, width):
        return image01
    resized = F.interpolate(image01[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return resized[0].clamp(0, 1)  # PIL resizes 8-bit images, so bicubic overshoot saturates there too


class LlavaOnevisionCritic(ChatCritic):
    """LLaVA-OneVision as a differentiable Yes/No critic (tiny or real: same code)."""

    model_types = ("llava_onevision",)

    def __init__(self, model, processor):
        super().__init__(model, processor)
        image_processor = processor.image_processor
        self.crop = (image_processor.size.height, image_processor.size.width)
        self.pinpoints = image_processor.image_grid_pinpoints
        self.mean = torch.tensor(image_processor.image_mean).reshape(3, 1, 1)
        self.std = torch.tensor(image_processor.image_std).reshape(3, 1, 1)

    def _normalise(self, image01: torch.Tensor) -> torch.Tensor:
        return (image01 - self.mean.to(image01)) / self.std.to(image01)

    def anyres_crops(self, image01: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(P,3,h,w) normalised crops of one image shown alone, and its number of <image> tokens."""
        height, width = image01.shape[-2:]
        best = select_best_resolution((height, width), self.pinpoints)
        new_height, new_width = get_patch_output_size(image01, best, input_data_format="channels_first")
        resized = _resize(image01, new_height, new_width)
        top, left = (best[0] - new_height) // 2, (best[1] - new_width) // 2
        canvas = F.pad(resized, (left, best[1] - new_width - left, top, best[0] - new_height - top))  # zeros
        crops = [_resize(image01, *self.crop)] + divide_to_patches(canvas, self.crop)
        tokens = self.processor._get_number_of_features(height, width, *self.crop)
        return self._normalise(torch.stack(crops)), tokens

    def square_crop(self, image01: torch.Tensor) -> torch.Tensor:
        """(1,3,h,w): one of several images in a prompt, padded to a square with the mean colour, then resized."""
        height, width = image01.shape[-2:]
        side = max(height, width)
        background = torch.tensor([int(m * 255) / 255 for m in self.mean.flatten().tolist()]).to(image01)
        canvas = background.reshape(3, 1, 1).expand(3, side, side).clone()
        top, left = (side - height) // 2, (side - width) // 2
        canvas = canvas.index_put(
            (torch.arange(3)[:, None, None], torch.arange(top, top + height)[None, :, None],
             torch.arange(left, left + width)[None, None, :]), image01)
        return self._normalise(_resize(canvas, *self.crop))[None]

    def answer_logits(self, images: list[list[torch.Tensor]], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        crops, sizes, counts, prompts = [], [], [], []
        image_token = self.processor.image_token
        for sample_images, text in zip(images, texts):
            prompt = self.prompt(len(sample_images), text)
            for image in sample_images:
                image01 = ((image.float() + 1) / 2).clamp(0, 1)
                if len(sample_images) == 1:
                    pixels, tokens = self.anyres_crops(image01)
                else:
                    pixels, tokens = self.square_crop(image01), self.processor.num_image_tokens + 1  # + newline
                crops.append(pixels)
                sizes.append(list(image01.shape[-2:]))
                if self.processor.vision_feature_select_strategy == "default":
                    tokens -= 1  # the CLS feature is dropped
                prompt = prompt.replace(image_token, "<|placeholder|>" * tokens, 1)
            counts.append(len(sample_images))
            prompts.append(prompt.replace("<|placeholder|>", image_token))
        most = max(c.shape[0] for c in crops)
        pixel_values = torch.stack([F.pad(c, (0, 0, 0, 0, 0, 0, 0, most - c.shape[0])) for c in crops])
        batch = left_padded(self.processor.tokenizer, prompts, device)
        output = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=pixel_values.to(device=device, dtype=dtype),
            image_sizes=torch.tensor(sizes, device=device),
            batch_num_images=torch.tensor(counts, device=device),
            logits_to_keep=1,
        )
        logits = output.logits[:, -1].float()
        return logits[:, self.yes_id], logits[:, self.no_id]
