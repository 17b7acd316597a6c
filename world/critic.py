"""The world's critic: a Qwen2.5-VL trained from scratch to answer the trainer's exact Yes/No questions about world
images (it stands in for a pretrained VLM's knowledge of the world; the editor itself never sees a pair).

It trains through the trainer's own `QwenVLCritic.answer_logits`, so prompts, image preprocessing and the Yes/No
read-out are the ones NP-Edit training uses. Two things speed up a VLM that starts from nothing: a dense auxiliary
objective on the vision tower (the colours in each 8x8 block and how much of it is background, read off the
pixels), and
sampling question kinds in proportion to their held-out error.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

from model_zoo.qwen_vl import ImageOnlyQwen2VLProcessor
from model_zoo.tokenizer import QWEN_SPECIAL_TOKENS, build_qwen_tokenizer
from training.critics.qwen import QwenVLCritic
from world.budget import BudgetedRun
from world.questions import KINDS, LabelledQuestion, labelled_question, question_set
from world.teacher import world_vocabulary
from world.vae import invocation
from world.verify import PALETTES, NAMES

HELD_OUT_SEED = 20_000_003
BLOCK = 8  # pixels per side of a dense-label block (the vision patch)
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
VISION = dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128, window_size=64,
              fullatt_block_indexes=[0, 1, 2, 3], patch_size=BLOCK, spatial_merge_size=2, temporal_patch_size=2)


def critic_tokenizer():
    """The Qwen-style tokenizer, with world words and the critic's question wording as single tokens."""
    rng = random.Random(0)
    questions = [labelled_question(rng, kind, augment=False).text for kind in KINDS for _ in range(3)]
    return build_qwen_tokenizer(vocab_size=1536, extra_text=world_vocabulary() + questions)


def new_critic(seed: int) -> QwenVLCritic:
    """A randomly initialised world critic (Qwen2.5-VL, patch 8: a 64 px image is 16 tokens, never resized)."""
    tokenizer = critic_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                          "mrope_section": [4, 6, 6]},  # time, height, width: head_dim / 2
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], **TEXT),
        vision_config=VISION, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    image_processor = Qwen2VLImageProcessorPil(patch_size=BLOCK, merge_size=2, temporal_patch_size=2,
                                               min_pixels=16 * 16, max_pixels=64 * 64)
    processor = ImageOnlyQwen2VLProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    return QwenVLCritic(model, processor)


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels, np.float32) / 127.5 - 1).permute(2, 0, 1)


def dense_labels(pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per 8x8 block, in merged-token order (each token's 2x2 blocks row-major): the share of its pixels in each
    colour family (nearest palette tone, either style; small objects are a minority of any block) and the share in
    the image's background family."""
    flat = pixels.reshape(-1, 3).astype(np.float32)
    tones = np.concatenate(list(PALETTES.values()))
    distance = (tones**2).sum(1)[None] - 2 * flat @ tones.T  # squared distance, less the pixel's own norm
    family = distance.argmin(axis=1) % len(NAMES)
    size = pixels.shape[0]
    n = size // BLOCK
    one_hot = np.eye(len(NAMES), dtype=np.float32)[family].reshape(n, BLOCK, n, BLOCK, len(NAMES))
    shares = one_hot.mean(axis=(1, 3))  # (n, n, families)
    shares = shares.reshape(n // 2, 2, n // 2, 2, len(NAMES)).transpose(0, 2, 1, 3, 4).reshape(-1, len(NAMES))
    background = np.bincount(family, minlength=len(NAMES)).argmax()
    return torch.from_numpy(shares), torch.from_numpy(shares[:, background].copy())


class DenseHead(torch.nn.Module):
    """Reads each merged vision token's four blocks: their colour-family shares and background share."""

    def __init__(self, width: int):
        super().__init__()
        self.colour = torch.nn.Linear(width, 4 * len(NAMES))
        self.background = torch.nn.Linear(width, 4)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.colour(tokens).reshape(-1, len(NAMES)), self.background(tokens).reshape(-1)


def yes_no_loss(critic: QwenVLCritic, questions: list[LabelledQuestion]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the answer between the Yes and No logits; returns it with the per-question correctness."""
    logit_yes, logit_no = critic.answer_logits([[_tensor(p) for p in q.images] for q in questions],
                                               [q.text for q in questions])
    margin = logit_yes - logit_no
    target = torch.tensor([q.answer == "Yes" for q in questions], dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(margin, target), ((margin > 0).float() == target)


def evaluate_critic(critic: QwenVLCritic, questions: list[LabelledQuestion], batch_size: int = 64) -> dict:
    """Accuracy per question kind on a fixed question set, with the mean and the weakest kind."""
    was_training = critic.model.training
    critic.model.eval()
    right: dict[str, list[float]] = defaultdict(list)
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            _, correct = yes_no_loss(critic, chunk)
            for q, c in zip(chunk, correct.tolist()):
                right[q.kind].append(c)
    critic.model.train(was_training)
    per_kind = {kind: float(np.mean(v)) for kind, v in right.items()}
    return {"accuracy": float(np.mean(list(per_kind.values()))), "weakest": min(per_kind.values()),
            "per_kind": per_kind}


def train_critic(out_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0, batch_size: int = 32,
                 lr: float = 1e-3, dense_weight: float = 0.5, eval_every_s: float = 600, eval_per_kind: int = 24,
                 progress: bool = True) -> dict:
    """Train (or continue) the critic under `out_dir`; writes `out_dir/critic/` (a Qwen2.5-VL checkpoint the
    trainer loads by path) and its manifest with held-out accuracy per question kind."""
    out_dir = Path(out_dir)
    critic = new_critic(seed)
    critic.model.requires_grad_(True).train()
    head = DenseHead(VISION["out_hidden_size"])
    params = list(critic.model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = random.Random(seed)
    run = BudgetedRun(out_dir / "critic_train_state.pt", {"critic": critic.model, "dense_head": head}, optimizer, rng,
                      minutes=minutes, max_steps=max_steps, eval_every_s=eval_every_s, desc="world critic",
                      progress=progress)
    held_out = question_set(HELD_OUT_SEED, eval_per_kind)
    vision_tokens: list[torch.Tensor] = []
    hook = critic.model.model.visual.register_forward_hook(lambda m, i, o: vision_tokens.append(o.pooler_output))

    def kind_weights() -> list[float]:
        """Sample a kind in proportion to its last held-out error (uniform until the first evaluation)."""
        last = run.history[-1]["per_kind"] if run.history else {}
        return [1.0 - last.get(kind, 0.0) + 0.05 for kind in KINDS]

    while run.running():
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (run.step + 1) / 100)
        kinds = rng.choices(KINDS, weights=kind_weights(), k=batch_size)
        questions = [labelled_question(rng, kind) for kind in kinds]
        vision_tokens.clear()
        answer_loss, _ = yes_no_loss(critic, questions)
        colour_labels, background_labels = zip(*(dense_labels(p) for q in questions for p in q.images))
        colour_logits, background_logits = head(torch.cat(vision_tokens))
        dense_loss = (-(torch.cat(colour_labels) * colour_logits.log_softmax(-1)).sum(-1).mean()
                      + F.binary_cross_entropy_with_logits(background_logits, torch.cat(background_labels)))
        loss = answer_loss + dense_weight * dense_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        run.after_step(answer_loss.item(), lambda: evaluate_critic(critic, held_out))
    hook.remove()
    facts = run.finish()
    quality = evaluate_critic(critic, question_set(HELD_OUT_SEED + 1, eval_per_kind * 2))
    save_critic(critic, out_dir / "critic")
    manifest = {"model": "critic", "architecture": "transformers Qwen2_5_VLForConditionalGeneration",
                "text": TEXT, "vision": VISION, "seed": seed, "batch_size": batch_size, "lr": lr,
                "dense_weight": dense_weight, **facts, "command": invocation(), "quality": quality}
    (out_dir / "critic" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def save_critic(critic: QwenVLCritic, path: Path) -> None:
    """fp16 safetensors + processor: loadable by `training.critics.load_critic` like any real critic."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() for k, v in critic.model.state_dict().items()}
    critic.model.save_pretrained(path, state_dict=state, safe_serialization=True)
    critic.processor.save_pretrained(path)
