"""The world's builder VLM: a Qwen2.5-VL trained to answer the corpus builder's five prompts on world images, so the
real builder pipeline (`datasets_builder`) can run on the world with its transformers backend.

Training is teacher-forced next-token loss on the answer tokens of `world.builder_answers` examples, the prompt built
exactly as `TransformersBackend.generate` builds it. Quality is measured by generating through that backend
(greedy, grammar-constrained) from the saved checkpoint and scoring the answers against the world's truth.
"""

from __future__ import annotations

import io
import json
import random
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from datasets_builder.vlm import PROMPTS, SamplingParams, VlmRequest
from datasets_builder.vlm.backends import TransformersBackend
from datasets_builder.vlm.prompts import TARGETED_EDIT_TYPES
from model_zoo.qwen_vl import load_vlm
from schemas import VlmStage
from schemas.errors import ConfigError
from world.budget import BudgetedRun
from world.builder_answers import BuilderExample, builder_example, is_object_centric, object_name, proposal_fits
from world.critic import TEXT, VISION, new_critic, save_critic
from world.scene import parse_caption
from world.vae import invocation

HELD_OUT_SEED = 30_000_017


def chat_prompt(processor, example: BuilderExample) -> str:
    """The prompt text exactly as the transformers backend renders it for this request."""
    request = VlmRequest(example.image_bytes, example.prompt, PROMPTS[example.stage].schema, 0)
    return processor.apply_chat_template(request.messages(), add_generation_prompt=True)


def encode(processor, examples: list[BuilderExample]) -> tuple[dict, torch.Tensor]:
    """Left-padded prompt + answer + end-of-turn token ids, pixels, and labels that are -100 outside the answer."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    images = [Image.open(io.BytesIO(e.image_bytes)).convert("RGB") for e in examples]
    prompts = processor(text=[chat_prompt(processor, e) for e in examples], images=images, return_tensors="pt",
                        padding=True)
    answers = tokenizer([e.answer + tokenizer.eos_token for e in examples], add_special_tokens=False).input_ids
    rows = [torch.cat([ids[mask.bool()], torch.tensor(answer)])
            for ids, mask, answer in zip(prompts["input_ids"], prompts["attention_mask"], answers)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, (row, answer) in enumerate(zip(rows, answers)):
        input_ids[i, width - len(row):] = row
        attention_mask[i, width - len(row):] = 1
        labels[i, width - len(answer):] = torch.tensor(answer)
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=prompts["pixel_values"],
                 image_grid_thw=prompts["image_grid_thw"])
    return batch, labels


def answer_loss(model, processor, examples: list[BuilderExample]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (and the end-of-turn token)."""
    batch, labels = encode(processor, examples)
    return model(**batch, labels=labels).loss


# -- evaluation --------------------------------------------------------------------------------------------------------
def _parsed(stage: VlmStage, text: str) -> dict | None:
    try:
        return PROMPTS[stage].parse(text)
    except ValueError:
        return None


def _scene_of(text: str):
    try:
        return parse_caption(text)
    except ConfigError:
        return None


def _caption_key(text: str) -> tuple | None:
    scene = _scene_of(text)
    return None if scene is None else scene.key()


def score_answers(examples: list[BuilderExample], texts: list[str]) -> dict:
    """The answers to `examples` scored against the world's truth (a stage absent from `examples` is left out)."""
    by_stage: dict[VlmStage, list[tuple[BuilderExample, dict | None]]] = {}
    for example, text in zip(examples, texts, strict=True):
        by_stage.setdefault(example.stage, []).append((example, _parsed(example.stage, text)))
    out: dict = {"schema_valid": {s.value: float(np.mean([p is not None for _, p in v])) for s, v in by_stage.items()}}

    def rate(stage: VlmStage, score) -> float:
        return float(np.mean([score(e, p) if p is not None else 0.0 for e, p in by_stage[stage]]))

    if VlmStage.CAPTION in by_stage:
        out["caption_match"] = rate(VlmStage.CAPTION, lambda e, p: _caption_key(p["caption"]) == e.scene.key())
    if VlmStage.PROPOSE in by_stage:
        count = PROMPTS[VlmStage.PROPOSE].schema["properties"]["edits"]["maxItems"]
        out["proposals_valid"] = rate(VlmStage.PROPOSE, lambda e, p: sum(
            proposal_fits(e.scene, x["edit_type"], x["instruction"]) for x in p["edits"]) / count)
        out["proposal_types_distinct"] = rate(VlmStage.PROPOSE,
                                              lambda e, p: len({x["edit_type"] for x in p["edits"]}) == count)
    if VlmStage.VALIDATE in by_stage:
        out["validity_agreement"] = rate(VlmStage.VALIDATE, lambda e, p: p["is_valid"] == e.edit.valid)
        out["target_object_match"] = rate(VlmStage.VALIDATE, lambda e, p: p["target_object"] == (
            e.edit.target_object if e.edit.valid and e.edit.edit_type in TARGETED_EDIT_TYPES else ""))
        valid = [(e, p) for e, p in by_stage[VlmStage.VALIDATE] if e.edit.valid]
        out["edited_caption_match"] = float(np.mean([
            p is not None and p["is_valid"] and _caption_key(p["edited_caption"]) == e.edit.target.key()
            for e, p in valid])) if valid else None
    if VlmStage.OBJECT in by_stage:
        out["object_centric_agreement"] = rate(VlmStage.OBJECT,
                                               lambda e, p: p["is_object_centric"] == is_object_centric(e.scene))
        centric = [(e, p) for e, p in by_stage[VlmStage.OBJECT] if is_object_centric(e.scene)]
        out["object_name_match"] = float(np.mean([p is not None and p["object_name"] == object_name(e.scene.objects[0])
                                                  for e, p in centric])) if centric else None
    if VlmStage.BACKGROUND in by_stage:
        count = PROMPTS[VlmStage.BACKGROUND].schema["properties"]["background_captions"]["maxItems"]

        def holds(e: BuilderExample, p: dict) -> float:
            wanted = e.scene.objects[0].key()
            scenes = [_scene_of(c) for c in p["background_captions"]]
            return sum(s is not None and any(o.key()[:2] + o.key()[3:] == wanted[:2] + wanted[3:] for o in s.objects)
                       for s in scenes) / count

        out["background_holds_object"] = rate(VlmStage.BACKGROUND, holds)
    return out


def held_out_examples(n: int) -> list[BuilderExample]:
    """n examples of every stage from scenes no training run draws."""
    rng = random.Random(HELD_OUT_SEED)
    return [builder_example(rng, stage) for stage in VlmStage for _ in range(n)]


def generate_answers(backend: TransformersBackend, examples: list[BuilderExample], *, batch_size: int = 8,
                     max_new_tokens: int | None = None) -> list[str]:
    """Greedy answers through the builder's backend, each request as the builder's runner makes it (`max_new_tokens`
    caps the stage's bound, for quick checks)."""
    requests = [VlmRequest(e.image_bytes, e.prompt, PROMPTS[e.stage].schema,
                           min(PROMPTS[e.stage].max_new_tokens, max_new_tokens or PROMPTS[e.stage].max_new_tokens))
                for e in examples]
    texts: list[str] = []
    for start in range(0, len(requests), batch_size):
        texts += backend.generate(requests[start:start + batch_size], SamplingParams())
    return texts


def evaluate_builder(model: str | Path | tuple, n: int = 16, *, batch_size: int = 8,
                     max_new_tokens: int | None = None) -> dict:
    """Quality on n held-out examples per stage, from a saved builder folder or a (model, processor) pair (saved to
    a temporary folder first, so both are measured on what the builder loads)."""
    if not isinstance(model, (str, Path)):
        with tempfile.TemporaryDirectory() as tmp:
            save_builder(*model, Path(tmp))
            return evaluate_builder(tmp, n, batch_size=batch_size, max_new_tokens=max_new_tokens)
    backend = TransformersBackend(model)
    examples = held_out_examples(n)
    texts = generate_answers(backend, examples, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return {**score_answers(examples, texts), "n_per_stage": n}


def save_builder(model, processor, path: Path) -> None:
    """fp16 safetensors + processor, in the layout `world.critic.save_critic` writes (any VLM backend loads it)."""
    save_critic(SimpleNamespace(model=model, processor=processor), path)


# -- training ----------------------------------------------------------------------------------------------------------
def train_builder(out_dir: Path, *, minutes: float, max_steps: int | None = None, seed: int = 0, batch_size: int = 16,
                  lr: float = 1e-3, warmup_steps: int = 100, eval_every_s: float = 900, eval_per_stage: int = 8,
                  final_eval_per_stage: int = 32, eval_max_new_tokens: int | None = None, progress: bool = True,
                  init_from: str | Path | None = None) -> dict:
    """Train (or continue) the builder VLM under `out_dir`, from scratch (the critic's architecture and tokenizer) or
    from a saved critic checkpoint; writes `out_dir/builder/` (fp16 safetensors + processor, loadable by the
    builder's transformers backend) and its manifest. `eval_max_new_tokens` caps generation in evaluations (for
    quick checks; the builder's own bound otherwise)."""
    out_dir = Path(out_dir)
    if init_from:
        model, processor = load_vlm(init_from)
    else:
        critic = new_critic(seed)
        model, processor = critic.model, critic.processor
    model.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = random.Random(seed)
    run = BudgetedRun(out_dir / "builder_train_state.pt", {"builder": model}, optimizer, rng, minutes=minutes,
                      max_steps=max_steps, eval_every_s=eval_every_s, desc="world builder VLM", progress=progress)
    while run.running():
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (run.step + 1) / warmup_steps)
        loss = answer_loss(model, processor, [builder_example(rng) for _ in range(batch_size)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        run.after_step(loss.item(), lambda: evaluate_builder((model, processor), eval_per_stage,
                                                                   max_new_tokens=eval_max_new_tokens))
    facts = run.finish()
    save_builder(model, processor, out_dir / "builder")
    quality = evaluate_builder(out_dir / "builder", final_eval_per_stage, max_new_tokens=eval_max_new_tokens)
    origin = {"init_from": str(init_from)} if init_from else {"text": TEXT, "vision": VISION}
    manifest = {"model": "builder", "architecture": "transformers Qwen2_5_VLForConditionalGeneration", **origin,
                "seed": seed, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps, **facts,
                "command": invocation(), "quality": quality}
    (out_dir / "builder" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
