"""LLaVA-OneVision critic: torch preprocessing vs the HF processor (anyres and multi-image), logits, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.critics import LlavaOnevisionCritic, load_critic
from training.losses import vlm_feedback_loss


@pytest.fixture(scope="module")
def critic(tiny_models) -> LlavaOnevisionCritic:
    return load_critic(tiny_models.llava)


def _uint8(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _tensor01(array):
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("shape", [(56, 56), (64, 96), (120, 50), (30, 200), (150, 150)])
def test_anyres_crops_and_token_counts_match_the_processor(critic, shape):
    array = _uint8(*shape)
    crops, tokens = critic.anyres_crops(_tensor01(array))
    batch = critic.processor(text=[critic.prompt(1, "x")], images=[Image.fromarray(array)], return_tensors="pt")
    assert tokens == int((batch["input_ids"] == critic.processor.image_token_id).sum())
    reference = batch["pixel_values"][0]
    assert crops.shape[0] == int((reference.flatten(1).abs().sum(1) > 0).sum()) or crops.shape == reference.shape
    difference = (crops - reference[: crops.shape[0]]).abs()
    if shape == (56, 56):
        assert float(difference.max()) <= 1e-6  # no resize: exact
    assert float(difference.mean()) < 0.01  # PIL's 8-bit bicubic vs torch's float bicubic


def test_multi_image_crops_match_the_processor(critic):
    arrays = [_uint8(64, 96, 1), _uint8(80, 40, 2)]
    batch = critic.processor.image_processor(images=[[Image.fromarray(a) for a in arrays]], return_tensors="pt")
    for i, array in enumerate(arrays):
        ours = critic.square_crop(_tensor01(array))
        assert float((ours[0] - batch["pixel_values"][i, 0]).abs().mean()) < 0.01


def test_logits_match_a_processor_forward_for_mixed_batches(critic):
    arrays = [_uint8(64, 96, 3), _uint8(56, 56, 4)]
    images = [_tensor01(a) * 2 - 1 for a in arrays]
    texts = ["Does this image contain a cat? Answer Yes or No.", "Is the second image the same? Answer Yes or No."]
    logit_yes, logit_no = critic.answer_logits([[images[0]], [images[0], images[1]]], texts)
    for sample, (pils, text) in enumerate((([arrays[0]], texts[0]), (arrays, texts[1]))):
        pil = [Image.fromarray(a) for a in pils]
        batch = critic.processor(text=[critic.prompt(len(pil), text)], images=pil if len(pil) == 1 else [pil],
                                 return_tensors="pt")
        logits = critic.model(**batch, logits_to_keep=1).logits[0, -1]
        assert abs(float(logit_yes[sample] - logits[critic.yes_id])) < 5e-3
        assert abs(float(logit_no[sample] - logits[critic.no_id])) < 5e-3


def test_gradient_reaches_the_pixels(critic):
    image = (torch.rand(3, 64, 64) * 2 - 1).requires_grad_(True)
    other = torch.rand(3, 64, 64) * 2 - 1
    logit_yes, logit_no = critic.answer_logits([[image], [other, image]], ["Is it red?", "Same?"])
    vlm_feedback_loss(logit_yes, logit_no).sum().backward()
    assert float(image.grad.abs().sum()) > 0
    assert all(p.grad is None for p in critic.model.parameters())


def test_unknown_critic_family_is_a_clear_error(tiny_models):
    with pytest.raises(ValueError, match="no critic for model type 'qwen3'"):
        load_critic(tiny_models.generator / "text_encoder")


def test_a_critic_refuses_another_family(tiny_models, critic):
    from training.critics import QwenVLCritic

    with pytest.raises(ValueError, match="QwenVLCritic needs a qwen2_vl / qwen2_5_vl model, got 'llava_onevision'"):
        QwenVLCritic(critic.model, critic.processor)
