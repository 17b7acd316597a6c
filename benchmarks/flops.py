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
