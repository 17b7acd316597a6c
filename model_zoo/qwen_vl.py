"""Qwen2.5-VL: a tiny random-weight build, and the one loader (by path or hub id) every stage uses."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.processing_utils import ProcessorMixin

from model_zoo.tokenizer import QWEN_SPECIAL_TOKENS, build_qwen_tokenizer

QWEN_VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL/2.5-VL processor without the video processor.

    The stock processor cannot be built without torchvision (its video processor needs it), and torchvision does not
    import beside the CPU torch wheel; `AutoProcessor` then silently returns only the tokenizer. Images need nothing
    from the video path, so this subclass drops it (ProcessorMixin derives sub-processors from `__init__`'s signature).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def tiny_qwen25_vl_config(vocab_size: int, token_ids: dict[str, int]) -> Qwen2_5_VLConfig:
    """A 0.2M-parameter Qwen2.5-VL: 2 text layers of width 64, a 2-block vision tower of width 32."""
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            tie_word_embeddings=False,
            bos_token_id=token_ids["<|endoftext|>"],
            eos_token_id=token_ids["<|im_end|>"],
            pad_token_id=token_ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            window_size=112,
            fullatt_block_indexes=[1],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
    )


def build_tiny_qwen25_vl(out_dir: Path, seed: int) -> Path:
    """Build the tiny Qwen2.5-VL (model + processor + chat template) with seeded random weights; save it."""
    tokenizer = build_qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = tiny_qwen25_vl_config(len(tokenizer), ids)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=224 * 224)
    processor = ImageOnlyQwen2VLProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def load_processor(path: str | Path):
    """Load a VLM's processor by path or hub id, working around the missing torchvision on CPU."""
    config = AutoConfig.from_pretrained(path)
    if config.model_type in QWEN_VL_MODEL_TYPES:
        return ImageOnlyQwen2VLProcessor.from_pretrained(path)
    if config.model_type == "llava_onevision":
        from model_zoo.llava_onevision import ImageOnlyLlavaOnevisionProcessor

        return ImageOnlyLlavaOnevisionProcessor.from_pretrained(path)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


def load_vlm(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load (model, processor) for an image-text-to-text VLM, in eval mode, frozen."""
    model: PreTrainedModel = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    return model, load_processor(path)
