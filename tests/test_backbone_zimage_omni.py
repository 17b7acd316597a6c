"""Z-Image in `ZImageOmniPipeline`'s layout (references read through SigLIP2 as well as their latent): loading by path,
forwards, the SigLIP tokens really conditioning, and sampling through the adapter against diffusers' own pipeline on
the tiny model, for the zoo's build and for a checkpoint the adapter exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ZImageOmniPipeline
from PIL import Image

from backbone_checks import check_forwards
from training.backbones import ZImageBackbone, backbone_class
from training.sampling import edit_images

SIZE = 64
STEPS = 3
# ZImageOmniPipeline encodes the reference with `image.bfloat16()`, so it runs only with a bfloat16 VAE; the adapter's
# VAE is cast the same way for the comparison. The final latents then differ by float32 rounding alone (batched SigLIP2
# vs one image at a time, the pipeline's (1000 - 1000 sigma) / 1000 time); the decoded images by one bfloat16 step, the
# resolution of the pipeline's bfloat16 image (2^-8 on [0, 1], 2^-7 on [-1, 1]).
LATENT_TOLERANCE = 2e-5
IMAGE_TOLERANCE = 2 ** -7
BF16_VAE = {"vae": torch.bfloat16, "default": torch.float32}


@pytest.fixture(scope="module")
def omni(tiny_models):
    return ZImageBackbone.from_pretrained(tiny_models.omni)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _as_reference(pixels: np.ndarray) -> torch.Tensor:
    """The reference tensor the pipeline encodes, strides included: a bfloat16 convolution rounds differently for
    another memory layout of the same values."""
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    return Flux2ImageProcessor(vae_scale_factor=16).preprocess(Image.fromarray(pixels), height=SIZE, width=SIZE,
                                                               resize_mode="crop")


def _pipeline_edit(path, pixels: np.ndarray, prompt: str, steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's final latents and image in [-1, 1] (CFG off)."""
    pipe = ZImageOmniPipeline.from_pretrained(path, dtype=BF16_VAE)
    pipe.set_progress_bar_config(disable=True)
    latents, image = (pipe(image=[Image.fromarray(pixels)], prompt=prompt, height=SIZE, width=SIZE,
                           num_inference_steps=steps, guidance_scale=0.0, generator=torch.Generator().manual_seed(0),
                           output_type=kind).images for kind in ("latent", "pt"))
    return latents, image.float() * 2 - 1


def _adapter_edit(backbone: ZImageBackbone, pixels: np.ndarray, prompt: str, steps: int = STEPS):
    """The adapter's Euler edit: the final latents and image in [-1, 1], with the pipeline's bfloat16 VAE."""
    import copy

    twin = backbone.with_transformer(backbone.transformer)
    twin.vae = copy.deepcopy(backbone.vae).to(torch.bfloat16)
    latents = []
    decode = twin.decode_latents
    twin.decode_latents = lambda x: latents.append(x) or decode(x)
    image = edit_images(twin, _as_reference(pixels), [prompt], num_steps=steps, sampler="euler",
                        generator=torch.Generator().manual_seed(0))
    return latents[0], image.float()


def _assert_same_edit(ours, theirs) -> None:
    torch.testing.assert_close(ours[0], theirs[0], atol=LATENT_TOLERANCE, rtol=0)
    torch.testing.assert_close(ours[1], theirs[1], atol=IMAGE_TOLERANCE, rtol=0)


def test_omni_layout_loads_with_siglip_and_runs_t2i_and_edit_forward(omni, tiny_models):
    assert backbone_class(tiny_models.omni) is ZImageBackbone
    assert omni.pipeline == "ZImageOmniPipeline" and omni.siglip is not None
    latents = check_forwards(omni, SIZE)
    assert latents.shape == (2, 16, SIZE // 8, SIZE // 8)


def test_siglip_tokens_condition_the_edit_and_are_required(omni):
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    latents, noise, t = omni.encode_images(images), torch.randn(2, 16, SIZE // 8, SIZE // 8), torch.tensor([0.3, 0.8])
    text = omni.encode_text(["add a hat"] * 2, num_references=1, reference_images=images)
    other = omni.encode_text(["add a hat"] * 2, num_references=1, reference_images=images.flip(0))
    assert text.reference_tokens[0][0].shape == (8, 8, 32)  # a 64 px image: an 8x8 grid of tokens
    same_latent = omni.predict_velocity(noise, t, text, reference=latents)
    other_tokens = omni.predict_velocity(noise, t, other, reference=latents)
    assert not torch.allclose(same_latent, other_tokens)  # SigLIP2 tokens alone change the prediction
    with pytest.raises(ValueError, match="reference_images"):
        omni.encode_text(["add a hat"] * 2, num_references=1)
    plain = ZImageBackbone(omni.transformer, omni.text_encoder, omni.tokenizer, omni.vae, omni.shift,
                           siglip=omni.siglip, siglip_processor=omni.siglip_processor)
    without = type(text)(text.segments, 1)
    with pytest.raises(ValueError, match="SigLIP2 tokens"):
        plain.predict_velocity(noise, t, without, reference=latents)


def test_euler_edit_through_the_adapter_equals_the_pipeline(omni, tiny_models, pixels):
    _assert_same_edit(_adapter_edit(omni, pixels, "make it blue"), _pipeline_edit(tiny_models.omni, pixels,
                                                                                  "make it blue"))


def test_exported_checkpoint_loads_in_the_omni_pipeline_and_edits_as_npedit_edit(omni, pixels, tmp_path, capsys):
    from cli_run import run_cli

    noise = torch.Generator().manual_seed(0)
    trained = {k: v + 0.02 * torch.randn(v.shape, generator=noise) for k, v in omni.transformer.state_dict().items()}
    detached = omni.with_transformer(omni.transformer)
    detached.source = None  # as from a hub id: the frozen parts and model_index.json are written into frozen_dir
    checkpoint = detached.save_pretrained(tmp_path / "generator", transformer_state_dict=trained,
                                          frozen_dir=tmp_path / "frozen")
    assert backbone_class(checkpoint) is ZImageBackbone
    pipe = ZImageOmniPipeline.from_pretrained(checkpoint)
    assert type(pipe.siglip).__name__ == "Siglip2VisionModel"
    reloaded = ZImageBackbone.from_pretrained(checkpoint)
    for name, value in reloaded.transformer.state_dict().items():
        torch.testing.assert_close(value, trained[name], atol=0, rtol=0)

    theirs = _pipeline_edit(checkpoint, pixels, "make it red", steps=4)
    _assert_same_edit(_adapter_edit(reloaded, pixels, "make it red", steps=4), theirs)
    expected, untrained = theirs[1], _pipeline_edit(omni.source, pixels, "make it red", steps=4)[1]
    assert (expected - untrained).abs().max() > 0.01  # the pipeline draws with the exported weights

    image = tmp_path / "in.png"
    Image.fromarray(pixels).save(image)
    code, _, error = run_cli(capsys, "edit", "--checkpoint", str(checkpoint), "--image", str(image), "--instruction",
                             "make it red", "--steps", "4", "--sampler", "euler", "--out", str(tmp_path / "ours.png"))
    assert code == 0, error
    cli = np.asarray(Image.open(tmp_path / "ours.png"), np.int16)
    fp32_vae = edit_images(reloaded, _as_reference(pixels), ["make it red"], num_steps=4, sampler="euler",
                           generator=torch.Generator().manual_seed(0))
    as_png = ((fp32_vae[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).numpy().astype(np.int16)
    assert np.abs(cli - as_png).max() <= 1  # `npedit edit` is the adapter (PNG rounding aside), which with the
    # pipeline's bfloat16 VAE draws the pipeline's image (above); with its own float32 VAE it differs by that alone:
    assert (torch.from_numpy(cli).permute(2, 0, 1) / 127.5 - 1 - expected[0]).abs().max() < 0.1
