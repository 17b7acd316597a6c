"""What every backbone adapter must do, checked the same way for each (Z-Image, FLUX.2 klein)."""

from __future__ import annotations

import pytest
import torch


def check_forwards(backbone, size: int) -> torch.Tensor:
    """Text-to-image and edit velocities of the latent's shape, the reference really conditioning the edit, and a
    reference without reference-encoded text refused; returns the latents of two random images."""
    images = torch.rand(2, 3, size, size) * 2 - 1
    latents = backbone.encode_images(images)
    assert latents.shape[:2] == (2, backbone.latent_channels)
    noise = torch.randn_like(latents)
    t = torch.tensor([0.25, 0.9])
    v_t2i = backbone.predict_velocity(noise, t, backbone.encode_text(["a cat", "a red car"]))
    edit_text = backbone.encode_text(["add a hat", "make it blue"], num_references=1, reference_images=images)
    v_edit = backbone.predict_velocity(noise, t, edit_text, reference=latents)
    assert v_t2i.shape == v_edit.shape == latents.shape
    assert torch.isfinite(v_edit).all()
    v_other_ref = backbone.predict_velocity(noise, t, edit_text, reference=latents.flip(0))
    assert not torch.allclose(v_edit, v_other_ref)  # the reference really conditions the output
    with pytest.raises(ValueError, match="num_references"):
        backbone.predict_velocity(noise, t, edit_text)
    return latents
