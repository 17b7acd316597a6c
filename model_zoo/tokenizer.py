"""An offline byte-level BPE tokenizer carrying the Qwen family's special tokens and chat template."""

from __future__ import annotations

from importlib import resources

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
)

# Qwen-style chat template: string or multimodal content; `enable_thinking=False` appends an empty think block
# (the Qwen3 convention the Z-Image text path relies on).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def tokenizer_training_text() -> list[str]:
    """The text shipped in the repo that the tiny tokenizer is trained on."""
    text = resources.files("model_zoo").joinpath("corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_qwen_tokenizer(
    vocab_size: int = 1024,
    special_tokens: tuple[str, ...] = QWEN_SPECIAL_TOKENS,
    extra_special_tokens: dict[str, str] | None = None,
    chat_template: str = QWEN_CHAT_TEMPLATE,
    extra_text: list[str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE on the shipped corpus (plus `extra_text`, e.g. a world's vocabulary, so
    its words become single tokens) and wrap it as a Qwen-style HF tokenizer."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_training_text() + list(extra_text or []), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=extra_special_tokens
        or {
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
    tokenizer.chat_template = chat_template
    return tokenizer
