"""FLUX.2 klein: a tiny random-weight build saved in the diffusers pipeline layout `Flux2KleinPipeline` loads."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from transformers import Qwen3Config, Qwen3ForCausalLM

from model_zoo.tokenizer import build_qwen_tokenizer

TINY_TEXT_HIDDEN = 16
# the pipeline stacks hidden states 9, 18 and 27, so the text encoder needs more than 27 layers (the real one has 36)
TINY_TEXT_LAYERS = 28
KLEIN_TEXT_LAYERS = (9, 18, 27)
TINY_LATENT_CHANNELS = 32  # as the real VAE: 2x2-patchified to 128-channel transformer tokens


def tiny_klein_transformer() -> Flux2Transformer2DModel:
    """Flux2 DiT of width 32: 1 double-stream + 1 single-stream block, 4-axis RoPE summing to the head dim."""
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * TINY_LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=len(KLEIN_TEXT_LAYERS) * TINY_TEXT_HIDDEN,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,  # klein feeds no guidance embedding (CFG for the base, none for the distilled)
    )


def tiny_klein_text_encoder(vocab_size: int, pad_token_id: int) -> Qwen3ForCausalLM:
    """A narrow 28-layer Qwen3 causal LM (the pipeline's text encoder class), deep enough for layers 9/18/27."""
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=TINY_TEXT_HIDDEN,
        intermediate_size=2 * TINY_TEXT_HIDDEN,
        num_hidden_layers=TINY_TEXT_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=TINY_TEXT_HIDDEN // 2,
        max_position_embeddings=1024,  # prompts are padded to 512 tokens
        pad_token_id=pad_token_id,
    )
    return Qwen3ForCausalLM(config)


def tiny_klein_vae() -> AutoencoderKLFlux2:
    """An 8x-downsampling 32-channel Flux2 VAE with seeded, non-trivial batch-norm latent statistics."""
    vae = AutoencoderKLFlux2(
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=TINY_LATENT_CHANNELS,
        norm_num_groups=8,
        mid_block_add_attention=False,
    )
    channels = vae.bn.num_features
    vae.bn.running_mean.copy_(0.1 * torch.randn(channels))
    vae.bn.running_var.copy_(0.5 + torch.rand(channels))
    return vae


def tiny_klein_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The klein scheduler config: resolution-dependent exponential shift (the pipeline passes mu)."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def build_tiny_flux2_klein(out_dir: Path, seed: int) -> Path:
    """Build transformer + Qwen3 text encoder + VAE + scheduler + tokenizer with seeded weights; save the pipeline
    (the undistilled base: `is_distilled=False`, so classifier-free guidance applies above scale 1)."""
    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = tiny_klein_transformer()
    torch.manual_seed(seed + 1)
    text_encoder = tiny_klein_text_encoder(len(tokenizer), tokenizer.pad_token_id)
    torch.manual_seed(seed + 2)
    vae = tiny_klein_vae()
    pipeline = Flux2KleinPipeline(scheduler=tiny_klein_scheduler(), vae=vae, text_encoder=text_encoder,
                                  tokenizer=tokenizer, transformer=transformer, is_distilled=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out_dir)
    return out_dir
