"""The critic protocol: a frozen VLM answering Yes/No about one or more images per sample, differentiably."""

from __future__ import annotations

from typing import Protocol

import torch


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
