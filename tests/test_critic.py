"""The critic: differentiable pixels match the HF processor; logits match a processor-path forward; grads flow."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from training.critics import QwenVLCritic, qwen_pixel_values
from training.losses import vlm_feedback_loss
from training.questions import questions_for, removed_object


def _uint8(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _critic(vlm) -> QwenVLCritic:
    return QwenVLCritic(*vlm)


def test_pixel_path_matches_the_processor_exactly_without_resize(vlm):
    critic = _critic(vlm)
    for height, width in ((56, 84), (112, 56)):
        array = _uint8(height, width)
        ours, grid = qwen_pixel_values(torch.from_numpy(array).permute(2, 0, 1).float() / 255, critic.geometry)
        theirs = critic.processor.image_processor(images=[Image.fromarray(array)], return_tensors="pt")
        assert torch.equal(grid, theirs["image_grid_thw"])
        assert ours.shape == theirs["pixel_values"].shape
        assert float((ours - theirs["pixel_values"]).abs().max()) <= 1e-6


def test_pixel_path_close_to_the_processor_with_resize(vlm):
    critic = _critic(vlm)
    array = _uint8(64, 100)
    ours, grid = qwen_pixel_values(torch.from_numpy(array).permute(2, 0, 1).float() / 255, critic.geometry)
    theirs = critic.processor.image_processor(images=[Image.fromarray(array)], return_tensors="pt")
    assert torch.equal(grid, theirs["image_grid_thw"])
    assert float((ours - theirs["pixel_values"]).abs().mean()) < 0.03  # PIL's uint8 rounding after bicubic


def test_vlm_loss_equals_minus_log_sigmoid_of_the_gap_from_a_real_forward(vlm):
    critic = _critic(vlm)
    arrays = [_uint8(56, 84, 1), _uint8(56, 56, 2)]
    images = [torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1 for a in arrays]
    texts = ["Is there a cat? Answer Yes or No.", "Was the edit done? Answer Yes or No."]
    logit_yes, logit_no = critic.answer_logits([[images[0]], [images[0], images[1]]], texts)
    for sample, (pils, text) in enumerate((([arrays[0]], texts[0]), ([arrays[0], arrays[1]], texts[1]))):
        prompt = critic.prompt(len(pils), text)
        batch = critic.processor(text=[prompt], images=[Image.fromarray(a) for a in pils], return_tensors="pt")
        logits = critic.model(**batch, logits_to_keep=1).logits[0, -1]
        assert torch.allclose(logit_yes[sample], logits[critic.yes_id], atol=2e-4)
        assert torch.allclose(logit_no[sample], logits[critic.no_id], atol=2e-4)
        gap = logits[critic.yes_id] - logits[critic.no_id]
        assert torch.allclose(vlm_feedback_loss(logit_yes[sample], logit_no[sample]),
                              -torch.nn.functional.logsigmoid(gap), atol=2e-4)


def test_critic_gradient_reaches_the_pixels(vlm):
    critic = _critic(vlm)
    image = (torch.rand(3, 64, 64) * 2 - 1).requires_grad_(True)
    logit_yes, logit_no = critic.answer_logits([[image]], ["Is it red? Answer Yes or No."])
    vlm_feedback_loss(logit_yes, logit_no).sum().backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0
    assert all(p.grad is None for p in critic.model.parameters())  # frozen


def test_questions_per_edit_type():
    remove = questions_for("remove", "Remove the red car on the left.")
    assert [(q.images, q.correct, q.kind) for q in remove] == [
        (("output",), "No", "edit"), (("reference", "output"), "Yes", "identity")]
    assert "the red car on the left" in remove[0].text
    assert removed_object("Take out the lamp") == "the lamp"
    other = questions_for("style", "Make it a watercolor")
    assert [q.correct for q in other] == ["Yes", "Yes"] and all(len(q.images) == 2 for q in other)
