"""Z-Image: tiny random-weight builds saved in the diffusers pipeline layouts real checkpoints use: `ZImagePipeline`
(text-to-image) and `ZImageOmniPipeline` (references also read through a SigLIP2 image encoder)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model, Siglip2ImageProcessorPil, Siglip2VisionConfig, Siglip2VisionModel

from model_zoo.tokenizer import build_qwen_tokenizer

TINY_CAPTION_DIM = 32
TINY_SIGLIP_DIM = 32
SIGLIP_PATCH = 8  # a 64 px image is an 8x8 grid of SigLIP2 tokens


def tiny_zimage_transformer(siglip_feat_dim: int | None = None) -> ZImageTransformer2DModel:
    """0.6M-parameter Z-Image DiT: width 64, 2 main + 1 refiner layers; `sum(axes_dims)` equals the head dim. With
    `siglip_feat_dim` it also embeds and refines SigLIP tokens (omni)."""
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
        siglip_feat_dim=siglip_feat_dim,
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


def tiny_siglip2() -> tuple[Siglip2VisionModel, Siglip2ImageProcessorPil]:
    """A 2-layer SigLIP2 vision tower (NaFlex: patches of 8 px, at most 64 of them) and its image processor.

    The processor is the PIL one: the default `Siglip2ImageProcessor` needs torchvision, which the CPU setup lacks."""
    config = Siglip2VisionConfig(hidden_size=TINY_SIGLIP_DIM, intermediate_size=2 * TINY_SIGLIP_DIM,
                                 num_hidden_layers=2, num_attention_heads=2, num_patches=64, patch_size=SIGLIP_PATCH)
    return Siglip2VisionModel(config), Siglip2ImageProcessorPil(patch_size=SIGLIP_PATCH, max_num_patches=64)


def build_tiny_zimage_omni(out_dir: Path, seed: int) -> Path:
    """The Z-Image build with a SigLIP2 encoder beside it, saved in `ZImageOmniPipeline`'s layout."""
    from diffusers import ZImageOmniPipeline  # imported here: importing it warns that torchvision is missing

    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = tiny_zimage_transformer(siglip_feat_dim=TINY_SIGLIP_DIM)
    torch.manual_seed(seed + 1)
    text_encoder = tiny_qwen3_text_encoder(len(tokenizer), tokenizer.pad_token_id)
    torch.manual_seed(seed + 2)
    vae = tiny_flux_vae()
    torch.manual_seed(seed + 3)
    siglip, processor = tiny_siglip2()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipeline = ZImageOmniPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                  transformer=transformer, siglip=siglip, siglip_processor=processor)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out_dir)
    return out_dir
