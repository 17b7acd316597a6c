"""FLOPs of the Z-Image transformer at real shapes, counted on the meta device (no weights): the numbers a GPU run
divides by its time to state MFU."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def zimage_forward_flops(resolution: int) -> tuple[float, float, int]:
    """(text-to-image forward, omni forward with one reference image, parameters) of the released 6B config."""
    from diffusers import ZImageTransformer2DModel

    side = resolution // 8  # latent side
    with torch.device("meta"):
        transformer = ZImageTransformer2DModel()  # the released 6B config (dim 3840, 30 layers)
        latent = torch.empty(16, 1, side, side)
        caption = [torch.empty(64, 2560)]
        segments = [torch.empty(8, 2560), torch.empty(64, 2560), torch.empty(4, 2560)]
        t = torch.empty(1)

        def count(**kwargs) -> float:
            counter = FlopCounterMode(display=False)
            with counter:
                transformer(t=t, **kwargs)
            return counter.get_total_flops()

        t2i = count(x=[latent], cap_feats=caption)
        omni = count(x=[[latent, latent]], cap_feats=[segments], siglip_feats=[None], image_noise_mask=[[0, 1]])
    return t2i, omni, sum(p.numel() for p in transformer.parameters())


# FLUX.2 klein base 4B's transformer (its published transformer/config.json)
KLEIN_4B = dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
                axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False)


def klein_forward_flops(resolution: int, text_tokens: int = 512) -> tuple[float, float, int]:
    """(text-to-image forward, forward with one reference image, parameters) of FLUX.2 klein base 4B; prompts are
    padded to 512 tokens as the pipeline does."""
    from diffusers import Flux2Transformer2DModel

    side = resolution // 16  # 8x VAE, then 2x2 patches
    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(**KLEIN_4B)
        text = torch.empty(1, text_tokens, KLEIN_4B["joint_attention_dim"])
        text_ids = torch.zeros(text_tokens, 4)

        def count(images: int) -> float:
            counter = FlopCounterMode(display=False)
            with counter:
                transformer(hidden_states=torch.empty(1, images * side * side, 128), encoder_hidden_states=text,
                            timestep=torch.empty(1), img_ids=torch.zeros(images * side * side, 4), txt_ids=text_ids,
                            guidance=None, return_dict=False)
            return counter.get_total_flops()

        t2i, edit = count(1), count(2)
    return t2i, edit, sum(p.numel() for p in transformer.parameters())
