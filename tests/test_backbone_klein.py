"""FLUX.2 klein behind the `Backbone` protocol: loading by path, forwards, reference conditioning, and Euler sampling
through the adapter against diffusers' own `Flux2KleinPipeline` on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from PIL import Image

from backbone_checks import check_forwards
from model_zoo import weights_digest
from model_zoo.flux2_klein import build_tiny_flux2_klein
from training.backbones import Flux2KleinBackbone, backbone_class
from training.backbones.flux2_klein import pipeline_shift
from training.sampling import edit_images, generate_images

SIZE = 64  # the pipeline refuses conditioning images under 64 px
STEPS = 2
# Differences left are float32 rounding only: the pipeline hands the transformer (1000 sigma) / 1000, encodes the PIL
# reference as x / 255 * 2 - 1, and runs the two CFG branches as separate batches.
TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def klein(tiny_models):
    return backbone_class(tiny_models.klein).from_pretrained(tiny_models.klein)


@pytest.fixture(scope="module")
def pipeline(tiny_models):
    pipe = Flux2KleinPipeline.from_pretrained(tiny_models.klein)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sampler(tiny_models):
    """The adapter with the static shift equal to the pipeline's dynamic one at this size and step count."""
    return Flux2KleinBackbone.from_pretrained(tiny_models.klein, shift=pipeline_shift((SIZE // 16) ** 2, STEPS))


def _pipeline_images(pipeline, prompt: str, guidance_scale: float, image: Image.Image | None = None) -> torch.Tensor:
    out = pipeline(image=image, prompt=prompt, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                   guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0), output_type="pt")
    return out.images * 2 - 1


def test_klein_loads_by_path_and_runs_t2i_and_edit_forward(klein):
    assert isinstance(klein, Flux2KleinBackbone)
    assert (klein.latent_channels, klein.spatial_factor) == (128, 16)
    latents = check_forwards(klein, SIZE)
    assert latents.shape == (2, 128, SIZE // 16, SIZE // 16)
    assert klein.decode_latents(latents).shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])  # CFG off, and on (the base model is not distilled)
def test_euler_text_to_image_through_the_adapter_equals_the_pipeline(sampler, pipeline, guidance_scale):
    expected = _pipeline_images(pipeline, "a red cat on a sofa", guidance_scale)
    ours = generate_images(sampler, ["a red cat on a sofa"], size=(SIZE, SIZE), num_steps=STEPS,
                           cfg_scale=guidance_scale, generator=torch.Generator().manual_seed(0))
    assert ours.shape == expected.shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)


def test_euler_edit_through_the_adapter_equals_the_pipeline_with_a_conditioning_image(sampler, pipeline):
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    expected = _pipeline_images(pipeline, "make it blue", 1.0, image=Image.fromarray(pixels))
    reference = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    ours = edit_images(sampler, reference, ["make it blue"], num_steps=STEPS, sampler="euler",
                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)
    without_reference = _pipeline_images(pipeline, "make it blue", 1.0)
    assert (expected - without_reference).abs().max() > 100 * TOLERANCE


def test_shift_time_reproduces_the_pipeline_sigmas(sampler, pipeline):
    pipeline.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4), mu=np.log(sampler.shift))
    ours = sampler.shift_time(torch.linspace(1.0, 0.0, 5))
    torch.testing.assert_close(ours, pipeline.scheduler.sigmas, atol=0, rtol=0)


def test_saved_checkpoint_loads_in_the_pipeline_and_the_adapter(klein, tmp_path):
    transformer = {k: v + 0.01 for k, v in klein.transformer.state_dict().items()}
    linked = klein.save_pretrained(tmp_path / "linked", transformer_state_dict=transformer)
    assert (linked / "vae").is_symlink()
    detached = klein.with_transformer(klein.transformer)
    detached.source = None  # as from a hub id: frozen parts are written once into frozen_dir
    written = detached.save_pretrained(tmp_path / "written", frozen_dir=tmp_path / "frozen")
    assert (tmp_path / "frozen" / "model_index.json").exists()
    for path in (linked, written):
        pipe = Flux2KleinPipeline.from_pretrained(path)
        assert not pipe.config.is_distilled and type(pipe.transformer).__name__ == "Flux2Transformer2DModel"
        assert backbone_class(path) is Flux2KleinBackbone
    reloaded = Flux2KleinBackbone.from_pretrained(linked)
    for name, value in reloaded.transformer.state_dict().items():
        torch.testing.assert_close(value, transformer[name], atol=0, rtol=0)


def test_same_seed_gives_identical_klein_weights_and_another_seed_differs(tiny_models, tmp_path):
    again = build_tiny_flux2_klein(tmp_path / "again", seed=0)
    other = build_tiny_flux2_klein(tmp_path / "other", seed=1)
    assert weights_digest(again) == weights_digest(tiny_models.klein) != weights_digest(other)


def test_npedit_edit_on_an_exported_checkpoint_draws_what_the_pipeline_draws(klein, tmp_path, capsys):
    from cli_run import run_cli

    checkpoint = klein.save_pretrained(tmp_path / "generator", frozen_dir=tmp_path / "frozen")
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(image)
    code, _, error = run_cli(capsys, "edit", "--checkpoint", str(checkpoint), "--image", str(image), "--instruction",
                             "make it blue", "--steps", "3", "--sampler", "euler", "--out", str(tmp_path / "ours.png"))
    assert code == 0, error
    pipe = Flux2KleinPipeline.from_pretrained(checkpoint)
    theirs = pipe(image=Image.open(image), prompt="make it blue", height=SIZE, width=SIZE, num_inference_steps=3,
                  guidance_scale=1.0, generator=torch.Generator().manual_seed(0)).images[0]
    ours = np.asarray(Image.open(tmp_path / "ours.png"), np.int16)
    assert np.abs(ours - np.asarray(theirs, np.int16)).max() <= 1  # PNG rounding only
