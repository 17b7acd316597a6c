"""The critic protocol: a frozen VLM answering Yes/No about one or more images per sample, differentiably."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from model_zoo.qwen_vl import load_vlm


class Critic(Protocol):
    def answer_logits(self, images: list[list[torch.Tensor]], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """images[b] = the (3,H,W) images of sample b in [-1, 1]; returns (logit_yes, logit_no), each (B,)."""
        ...


def yes_no_token_ids(tokenizer) -> tuple[int, int]:
    """The ids of the single tokens 'Yes' and 'No' (the answer position is read, not generated)."""
    ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in ("Yes", "No"))
    if None in ids or tokenizer.unk_token_id in ids:
        raise ValueError("the critic's tokenizer must have single 'Yes' and 'No' tokens")
    return ids


def left_padded(tokenizer, prompts: list[str], device) -> dict:
    """Tokenize with left padding so the answer position is the last one for every sample."""
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)


class ChatCritic(torch.nn.Module):
    """What every chat-VLM critic shares: a frozen model + processor, Yes/No ids, the prompt, loading by path."""

    model_types: tuple[str, ...] = ()

    def __init__(self, model, processor):
        super().__init__()
        if model.config.model_type not in self.model_types:
            raise ValueError(f"{type(self).__name__} needs a {' / '.join(self.model_types)} model, "
                             f"got {model.config.model_type!r}")
        self.model = model.requires_grad_(False).eval()
        self.processor = processor
        self.yes_id, self.no_id = yes_no_token_ids(processor.tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32):
        return cls(*load_vlm(path, dtype=dtype))

    def prompt(self, num_images: int, text: str) -> str:
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
