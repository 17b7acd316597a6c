"""The losses against hand-computed cases (paper eqns. 4 and 5, appendix C's consistency, flow matching, guidance)."""

from __future__ import annotations

import math

import torch

from training.backbones.base import guided_velocity
from training.losses import (consistency_loss, dmd_gradient, dmd_loss, flow_matching_loss, reconstruction_loss,
                             vlm_feedback_loss)


def test_vlm_loss_is_minus_log_sigmoid_of_the_logit_gap():
    correct, wrong = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = torch.tensor([math.log(1 + math.exp(-2.0)), math.log(2.0), math.log(1 + math.exp(2.0))])
    assert torch.allclose(vlm_feedback_loss(correct, wrong), expected)
    assert torch.allclose(vlm_feedback_loss(correct, wrong, temperature=0.5)[0], torch.tensor(math.log(1 + math.e**-1)))


def test_dmd_gradient_hand_case_uses_a_per_sample_normaliser():
    x0 = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])  # (B=2, C=1, H=1, W=2)
    real = torch.tensor([[[[0.0, 0.0]]], [[[1.0, -3.0]]]])
    fake = torch.tensor([[[[0.5, 1.0]]], [[[2.0, 1.0]]]])
    # sample 0: mean|x0 - real| = (1 + 2) / 2 = 1.5 -> g = (0.5, 1.0) / 1.5; sample 1: (1 + 3) / 2 = 2 -> g = (1, 4) / 2
    expected = torch.tensor([[[[1 / 3, 2 / 3]]], [[[0.5, 2.0]]]])
    assert torch.allclose(dmd_gradient(x0, real, fake), expected)


def test_dmd_loss_autograd_gradient_equals_the_closed_form():
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 5, 6, requires_grad=True)
    real, fake = torch.randn(3, 4, 5, 6), torch.randn(3, 4, 5, 6)
    loss = dmd_loss(x0, real, fake)
    assert loss.shape == (3,)
    loss.sum().backward()
    closed = dmd_gradient(x0.detach(), real, fake) / (4 * 5 * 6)  # d/dx0 of 0.5*mean((x0 - sg(x0 - g))^2)
    assert torch.allclose(x0.grad, closed, atol=1e-7)
    assert torch.allclose(loss, 0.5 * dmd_gradient(x0.detach(), real, fake).pow(2).flatten(1).mean(1))


def test_dmd_gradient_of_one_sample_ignores_the_others():
    x0, real, fake = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    scaled_real = real.clone()
    scaled_real[1] = x0[1] + 10 * (real[1] - x0[1])
    assert torch.allclose(dmd_gradient(x0, real, fake)[0], dmd_gradient(x0, scaled_real, fake)[0])


def test_dmd_is_zero_when_fake_equals_real():
    x0, real = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4)
    loss = dmd_loss(x0, real, real.clone())
    loss.sum().backward()
    assert float(loss.detach().abs().max()) == 0.0 and float(x0.grad.abs().max()) == 0.0


def test_flow_matching_and_reconstruction_hand_cases():
    x0, eps = torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, -1.0]]]])
    v = torch.tensor([[[[1.0, 1.0]]]])  # target eps - x0 = (1, -1): errors 0 and 2 -> mean 2
    assert torch.allclose(flow_matching_loss(v, x0, eps), torch.tensor([2.0]))
    assert torch.allclose(reconstruction_loss(v, x0), torch.tensor([1.0]))


def test_consistency_is_the_pixel_mse_to_the_reference_per_sample():
    reference = torch.zeros(2, 3, 1, 2)
    output = torch.zeros(2, 3, 1, 2)
    output[0, 0, 0] = torch.tensor([1.0, -1.0])  # two of six pixels off by 1: 2 / 6
    output[1] = 0.5  # every pixel off by 0.5: 0.25
    assert torch.allclose(consistency_loss(output, reference), torch.tensor([1 / 3, 0.25]))


def test_guided_velocity_hand_case_one_scale_and_one_per_sample():
    v_pos = torch.tensor([[[[1.0, 3.0]]], [[[2.0, 0.0]]]])
    v_neg = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 1.0]]]])
    # s = 4: v_neg + 4 (v_pos - v_neg) -> (4, 9) and (5, -3); per sample (1, 0): v_pos then v_neg
    assert torch.equal(guided_velocity(v_pos, v_neg, 4.0), torch.tensor([[[[4.0, 9.0]]], [[[5.0, -3.0]]]]))
    assert torch.equal(guided_velocity(v_pos, v_neg, torch.tensor([1.0, 0.0])), torch.stack([v_pos[0], v_neg[1]]))
