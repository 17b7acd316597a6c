"""Tiny model zoo: seeded builds, loading by path through the same code real checkpoints use."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText

from backbone_checks import check_forwards
from model_zoo import build_tiny_models, weights_digest
from model_zoo.qwen_vl import ImageOnlyQwen2VLProcessor
from model_zoo.tokenizer import QWEN_SPECIAL_TOKENS


def _image(seed: int, size: int = 56) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_vlm_loads_through_auto_classes_and_generates_from_an_image_chat(tiny_models):
    config = AutoConfig.from_pretrained(tiny_models.vlm)
    assert config.model_type == "qwen2_5_vl"
    model = AutoModelForImageTextToText.from_pretrained(tiny_models.vlm).eval()
    processor = ImageOnlyQwen2VLProcessor.from_pretrained(tiny_models.vlm)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|image_pad|>" in prompt
    batch = processor(text=[prompt, prompt], images=[_image(0), _image(1, 84)], return_tensors="pt", padding=True)
    image_tokens = (batch["input_ids"] == config.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [4, 9]  # (56/14)^2/4 and (84/14)^2/4 merged patches
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    assert new.shape == (2, 4)
    assert all(isinstance(s, str) for s in processor.batch_decode(new))


def test_vlm_answers_yes_no_with_single_tokens(vlm):
    _, processor = vlm
    ids = processor.tokenizer.convert_tokens_to_ids(["Yes", "No"])
    assert processor.tokenizer.unk_token_id not in ids
    assert [processor.tokenizer.decode([i]) for i in ids] == ["Yes", "No"]
    assert all(processor.tokenizer.convert_tokens_to_ids(t) != processor.tokenizer.unk_token_id
               for t in QWEN_SPECIAL_TOKENS[1:])


def test_generator_backbone_loads_by_path_and_runs_t2i_and_edit_forward(zimage):
    latents = check_forwards(zimage, 64)
    assert latents.shape == (2, 16, 8, 8)
    assert zimage.decode_latents(latents).shape == (2, 3, 64, 64)


def test_same_seed_gives_identical_weights_and_another_seed_differs(tmp_path, tiny_models):
    again = build_tiny_models(tmp_path / "a", seed=0)
    other = build_tiny_models(tmp_path / "b", seed=1)
    for name in ("vlm", "generator", "llava"):
        first, second, third = (weights_digest(getattr(m, name)) for m in (tiny_models, again, other))
        assert first == second, name
        assert first != third, name
    assert (again.vlm / "tokenizer.json").read_bytes() == (tiny_models.vlm / "tokenizer.json").read_bytes()


def test_zoo_build_is_reused_and_rebuilt_after_damage(tmp_path):
    models = build_tiny_models(tmp_path, seed=3)
    stamp = (models.root / "manifest.json").stat().st_mtime_ns
    assert build_tiny_models(tmp_path, seed=3).root == models.root
    assert (models.root / "manifest.json").stat().st_mtime_ns == stamp
    for path in (models.vlm).iterdir():
        path.unlink()
    models.vlm.rmdir()
    rebuilt = build_tiny_models(tmp_path, seed=3)
    assert (rebuilt.vlm / "config.json").exists()
