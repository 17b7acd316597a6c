"""The world's critic: a Qwen2.5-VL trained from scratch to answer the trainer's exact Yes/No questions about world
images (it stands in for a pretrained VLM's knowledge of the world; the editor itself never sees a pair).

It trains through the trainer's own `QwenVLCritic.answer_logits`, so prompts, image preprocessing and the Yes/No
read-out are the ones NP-Edit training uses. Two things speed up a VLM that starts from nothing: dense auxiliary
objectives (`world.critic_objectives`: perception, comparison, binding) and sampling question kinds in proportion to
their held-out error.
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
from world.critic_objectives import AuxiliaryObjectives
from world.questions import (ALL_KINDS, KINDS, LabelledQuestion, labelled_question, question_set,
                             wrong_object_questions)
from world.teacher import world_vocabulary
from world.vae import invocation

HELD_OUT_SEED = 20_000_003
PATCH = 8  # pixels per side of a vision patch (and of a dense-label block in world.critic_objectives)
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
VISION = dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128, window_size=64,
              fullatt_block_indexes=[0, 1, 2, 3], patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2)


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
    image_processor = Qwen2VLImageProcessorPil(patch_size=PATCH, merge_size=2, temporal_patch_size=2,
                                               min_pixels=16 * 16, max_pixels=64 * 64)
    processor = ImageOnlyQwen2VLProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    return QwenVLCritic(model, processor)


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels, np.float32) / 127.5 - 1).permute(2, 0, 1)


def yes_no_loss(critic: QwenVLCritic, questions: list[LabelledQuestion], *, noise: float = 0.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the answer between the Yes and No logits; returns it with the per-question correctness. With
    `noise`, every image is shown with N(0, noise^2) added (images in [-1, 1]), the answer still the clean image's."""
    def shown(pixels: np.ndarray) -> torch.Tensor:
        image = _tensor(pixels)
        return image + noise * torch.randn(image.shape, generator=generator) if noise else image

    logit_yes, logit_no = critic.answer_logits([[shown(p) for p in q.images] for q in questions],
                                               [q.text for q in questions])
    margin = logit_yes - logit_no
    target = torch.tensor([q.answer == "Yes" for q in questions], dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(margin, target), ((margin > 0).float() == target)


def evaluate_critic(critic: QwenVLCritic, questions: list[LabelledQuestion], batch_size: int = 64, *,
                    noise: float = 0.0) -> dict:
    """Accuracy per question kind on a fixed question set, with the mean and the weakest kind; with `noise`, its
    images shown under that Gaussian noise (the same draws every time)."""
    was_training = critic.model.training
    critic.model.eval()
    right: dict[str, list[float]] = defaultdict(list)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            _, correct = yes_no_loss(critic, chunk, noise=noise, generator=generator)
            for q, c in zip(chunk, correct.tolist()):
                right[q.kind].append(c)
    critic.model.train(was_training)
    per_kind = {kind: float(np.mean(v)) for kind, v in right.items()}
    return {"accuracy": float(np.mean(list(per_kind.values()))), "weakest": min(per_kind.values()),
            "per_kind": per_kind}


def train_critic(out_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0, batch_size: int = 32,
                 lr: float = 1e-3, aux_weight: float = 0.5, eval_every_s: float = 600, eval_per_kind: int = 24,
                 kinds: tuple[str, ...] = KINDS, progress: bool = True) -> dict:
    """Train (or continue) the critic under `out_dir` on the question `kinds`; writes `out_dir/critic/` (a Qwen2.5-VL
    checkpoint the trainer loads by path) and its manifest with held-out accuracy per question kind."""
    critic = new_critic(seed)
    facts, quality = fit_critic(critic, Path(out_dir) / "critic_train_state.pt", minutes=minutes, max_steps=max_steps,
                                seed=seed, batch_size=batch_size, lr=lr, aux_weight=aux_weight,
                                eval_every_s=eval_every_s, eval_per_kind=eval_per_kind, kinds=kinds,
                                desc="world critic", progress=progress)
    manifest = {"model": "critic", "architecture": "transformers Qwen2_5_VLForConditionalGeneration",
                "text": TEXT, "vision": VISION, "seed": seed, "batch_size": batch_size, "lr": lr,
                "aux_weight": aux_weight, "kinds": list(kinds), **facts, "command": invocation(), "quality": quality}
    return save_with_manifest(critic, Path(out_dir) / "critic", manifest)


def finetune_critic(out_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0,
                    batch_size: int = 32, lr: float = 5e-4, anneal: bool = False, aux_weight: float = 0.5,
                    eval_every_s: float = 600, eval_per_kind: int = 24, kinds: tuple[str, ...] = ALL_KINDS,
                    progress: bool = True) -> dict:
    """Continue the critic in `out_dir/critic/` on `kinds` (by default the editing questions and the customization
    ones, so it learns the new without forgetting the old), at a constant rate or, with `anneal`, one cosine-annealed
    to zero over the budget; rewrites it and adds this phase ("finetune" or "anneal", or "anneal_2"... for a phase
    run again) to its manifest. A killed run resumes from `critic_<phase>_state.pt`."""
    out_dir = Path(out_dir)
    phase = "anneal" if anneal else "finetune"
    critic = QwenVLCritic.from_pretrained(out_dir / "critic", dtype=torch.float32)
    manifest = json.loads((out_dir / "critic" / "manifest.json").read_text())
    state_path = out_dir / f"critic_{phase}_state.pt"
    key = _phase_key(manifest, phase, state_path)
    facts, quality = fit_critic(critic, state_path, minutes=minutes, max_steps=max_steps,
                                seed=seed + (3 if anneal else 1), batch_size=batch_size, lr=lr, anneal=anneal,
                                aux_weight=aux_weight, eval_every_s=eval_every_s, eval_per_kind=eval_per_kind,
                                kinds=kinds, desc=f"world critic {phase}", progress=progress,
                                identity=None if key is None else {"manifest_key": key})
    key = key or phase
    manifest.update(quality=quality, **{key: {"kinds": list(kinds), "seed": seed, "batch_size": batch_size,
                                              "lr": lr, "aux_weight": aux_weight, **facts, "command": invocation()}})
    return save_with_manifest(critic, out_dir / "critic", manifest)


def _phase_key(manifest: dict, phase: str, state_path: Path) -> str | None:
    """The manifest key a fine-tuning phase is recorded under: the one its state was started with when it resumes
    (None for a state saved before states named it), else `phase`, or `phase_2`, `_3`... when earlier runs of the
    phase are already recorded."""
    if state_path.exists():
        return (torch.load(state_path, map_location="cpu", weights_only=False).get("identity") or {}).get(
            "manifest_key")
    keys = (phase if n == 1 else f"{phase}_{n}" for n in range(1, len(manifest) + 2))
    return next(key for key in keys if key not in manifest)


def fit_critic(critic: QwenVLCritic, state_path: Path, *, minutes: float, max_steps: int | None, seed: int,
               batch_size: int, lr: float, aux_weight: float, eval_every_s: float, eval_per_kind: int,
               kinds: tuple[str, ...], desc: str, progress: bool, anneal: bool = False, extra=None,
               extra_share: float = 0.0, extra_eval=None, identity: dict | None = None,
               input_noise: float = 0.0) -> tuple[dict, dict]:
    """Train `critic` on Yes/No questions of `kinds` plus the auxiliary objectives under a resumable time budget (the
    rate as `BudgetedRun.rate`); returns the run's facts and the final held-out quality. `extra(rng)`, when given,
    draws a question from elsewhere (e.g. about editors' outputs) for `extra_share` of every batch; `extra_eval()`
    adds its measure to each evaluation, under "extra". With `input_noise`, the answers are learnt from images under
    that Gaussian noise (randomized smoothing); the held-out measures stay on clean renders."""
    critic.model.requires_grad_(True).train()
    heads = AuxiliaryObjectives(critic)
    params = list(critic.model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = random.Random(seed)
    run = BudgetedRun(state_path, {"critic": critic.model, "heads": heads}, optimizer, rng, minutes=minutes,
                      max_steps=max_steps, eval_every_s=eval_every_s, desc=desc, progress=progress, identity=identity)
    held_out = question_set(HELD_OUT_SEED, eval_per_kind, kinds=kinds)
    wrong_held_out = wrong_object_questions(HELD_OUT_SEED, max(1, eval_per_kind // 2))

    def kind_weights() -> list[float]:
        """Sample a kind in proportion to its last held-out error (uniform until the first evaluation)."""
        last = run.history[-1]["per_kind"] if run.history else {}
        return [1.0 - last.get(kind, 0.0) + 0.05 for kind in kinds]

    while run.running():
        for group in optimizer.param_groups:
            group["lr"] = run.rate(lr, anneal=anneal)
        n_extra = round(batch_size * extra_share) if extra else 0
        questions = [labelled_question(rng, kind) for kind in rng.choices(kinds, weights=kind_weights(),
                                                                          k=batch_size - n_extra)]
        questions += [extra(rng) for _ in range(n_extra)]
        answer_loss, _ = yes_no_loss(critic, questions, noise=input_noise)
        auxiliary = heads.loss(questions)
        loss = answer_loss + aux_weight * sum(auxiliary.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        run.after_step(answer_loss.item(), lambda: {**evaluate_critic(critic, held_out),
                                                     "wrong_object": evaluate_critic(critic, wrong_held_out),
                                                     **({"extra": extra_eval()} if extra_eval else {})})
    heads.remove_hooks()
    facts = run.finish()
    return facts, {**evaluate_critic(critic, question_set(HELD_OUT_SEED + 1, eval_per_kind * 2, kinds=kinds)),
                   "wrong_object": evaluate_critic(critic, wrong_object_questions(HELD_OUT_SEED + 1, eval_per_kind))}


def save_with_manifest(critic: QwenVLCritic, path: Path, manifest: dict) -> dict:
    save_critic(critic, path)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def save_critic(critic: QwenVLCritic, path: Path) -> None:
    """fp16 safetensors + processor: loadable by `training.critics.load_critic` like any real critic."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() for k, v in critic.model.state_dict().items()}
    critic.model.save_pretrained(path, state_dict=state, safe_serialization=True)
    critic.processor.save_pretrained(path)
