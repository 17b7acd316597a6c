"""Z-Image: a tiny random-weight build saved in the diffusers pipeline layout (the layout real checkpoints use)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from model_zoo.tokenizer import build_qwen_tokenizer

TINY_CAPTION_DIM = 32


def tiny_zimage_transformer() -> ZImageTransformer2DModel:
    """0.6M-parameter Z-Image DiT: width 64, 2 main + 1 refiner layers; `sum(axes_dims)` equals the head dim."""
    return ZImageTransformer2DModel(
        in_channels=16,
        dim=64,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=TINY_CAPTION_DIM,
        axes_dims=[8, 12, 12],
        axes_lens=[1024, 256, 256],
    )


def tiny_qwen3_text_encoder(vocab_size: int, pad_token_id: int) -> Qwen3Model:
    """A 2-layer Qwen3 text model whose hidden size is the transformer's caption feature size."""
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=TINY_CAPTION_DIM,
        intermediate_size=2 * TINY_CAPTION_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=TINY_CAPTION_DIM // 2,
        max_position_embeddings=2048,
        pad_token_id=pad_token_id,
    )
    return Qwen3Model(config)


def tiny_flux_vae() -> AutoencoderKL:
    """A 1M-parameter 16-channel, 8x-downsampling VAE with Flux's latent scale and shift."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_zimage(out_dir: Path, seed: int) -> Path:
    """Build transformer + Qwen3 text encoder + VAE + scheduler + tokenizer with seeded weights; save the pipeline."""
    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = tiny_zimage_transformer()
    torch.manual_seed(seed + 1)
    text_encoder = tiny_qwen3_text_encoder(len(tokenizer), tokenizer.pad_token_id)
    torch.manual_seed(seed + 2)
    vae = tiny_flux_vae()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipeline = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out_dir)
    return out_dir
