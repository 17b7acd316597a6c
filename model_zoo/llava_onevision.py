"""LLaVA-OneVision (the paper's critic family): a tiny random-weight build with an image-only processor."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)
from transformers.processing_utils import ProcessorMixin

from model_zoo.tokenizer import build_qwen_tokenizer

LLAVA_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
# llava-hf OneVision layout: one <image> per image item, then a newline and the text.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ '\\n' }}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_CROP, TINY_PATCH = 56, 14  # 16 visual tokens per crop keeps CPU tests fast; the real model uses 384 / 14


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """LLaVA-OneVision processor without the video processor (which needs torchvision, absent beside CPU torch)."""

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                 video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
        self.num_image_tokens = num_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token, self.video_token = image_token, video_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        self.vision_aspect_ratio = vision_aspect_ratio
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def build_tiny_llava_onevision(out_dir: Path, seed: int) -> Path:
    """A 0.2M-parameter LLaVA-OneVision (SigLIP tower + Qwen2 LM) with processor and chat template; saved."""
    tokenizer = build_qwen_tokenizer(
        special_tokens=LLAVA_SPECIAL_TOKENS,
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_SPECIAL_TOKENS}
    pinpoints = [[TINY_CROP * a, TINY_CROP * b] for a in (1, 2, 3) for b in (1, 2, 3)]
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=TINY_CROP, patch_size=TINY_PATCH,
                           vision_use_head=False),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=8192, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": TINY_CROP, "width": TINY_CROP}, image_grid_pinpoints=pinpoints,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = ImageOnlyLlavaOnevisionProcessor(
        image_processor, tokenizer, num_image_tokens=(TINY_CROP // TINY_PATCH) ** 2,
        vision_feature_select_strategy="full", chat_template=LLAVA_CHAT_TEMPLATE,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
