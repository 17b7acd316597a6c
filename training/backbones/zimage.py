"""Z-Image adapter: `ZImageTransformer2DModel` + Qwen3 text encoder + 16-channel VAE, loaded by path or hub id.

Editing uses the transformer's native *omni* mode: the reference latent is a clean extra image in the token sequence
(t=1 "clean" embedding in Z-Image's convention), the noisy target comes last, and only the target is returned.
Z-Image's own convention (t_model = 1 - sigma, output = x0 - eps) is converted to the paper's here and only here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from transformers import AutoModel, AutoTokenizer

from training.backbones.base import FrozenPartsBackbone, TextFeatures, check_conditioning, save_layout


def omni_prompt_segments(prompt: str, num_references: int) -> list[str]:
    """The caption segments Z-Image's omni mode expects: one per image boundary, the prompt before the target."""
    if num_references == 0:
        return [f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"]
    return [
        "<|im_start|>user\n<|vision_start|>",
        *["<|vision_end|><|vision_start|>"] * (num_references - 1),
        f"<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n<|vision_start|>",
        "<|vision_end|><|im_end|>",
    ]


class ZImageBackbone(FrozenPartsBackbone):
    """The Z-Image family behind the `Backbone` protocol (see `training.backbones.base`)."""

    pipeline = "ZImagePipeline"  # the diffusers pipeline its checkpoints (and LoRA adapters) load in


    def __init__(self, transformer, text_encoder, tokenizer, vae: AutoencoderKL, shift: float,
                 source: str | Path | None = None):
        super().__init__(transformer, text_encoder, tokenizer, vae, shift, source)
        self.latent_channels = vae.config.latent_channels
        # pixels per latent-patch side: VAE downsampling (x8 for Z-Image) times the patch size (2): multiples of 16
        self.spatial_factor = 2 ** (len(vae.config.block_out_channels) - 1) * transformer.config.all_patch_size[0]

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        transformer_dtype: torch.dtype | None = None) -> ZImageBackbone:
        """Load every component from a diffusers-layout directory or hub id (tiny or real: same code).

        `dtype` is for the frozen text encoder; the transformer takes `transformer_dtype` (default: `dtype`), e.g.
        float32 master weights for training while the frozen parts run in bfloat16. The VAE stays float32."""
        transformer = ZImageTransformer2DModel.from_pretrained(path, subfolder="transformer",
                                                               torch_dtype=transformer_dtype or dtype)
        text_encoder = AutoModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
        return cls(transformer, text_encoder, tokenizer, vae, shift=float(scheduler.config.shift), source=path)

    def with_transformer(self, transformer) -> ZImageBackbone:
        """A backbone sharing this one's text encoder and VAE with another transformer (teacher, fake score)."""
        backbone = ZImageBackbone(transformer, self.text_encoder, self.tokenizer, self.vae, self.shift, self.source)
        backbone.compute_dtype = self.compute_dtype
        return backbone

    def save_pretrained(self, out_dir: str | Path, transformer_state_dict: dict | None = None,
                        frozen_dir: str | Path | None = None) -> Path:
        """A diffusers-layout checkpoint: the transformer is written (from `transformer_state_dict` when given, e.g.
        gathered from FSDP shards); frozen components are linked, not copied: to the source when it is a local
        folder, else to `frozen_dir`, where they are written once (a hub id as the base costs one copy per run)."""
        scheduler = FlowMatchEulerDiscreteScheduler(shift=self.shift, use_dynamic_shifting=False)
        return save_layout(out_dir, self.transformer, transformer_state_dict, source=self.source, frozen_dir=frozen_dir,
                           frozen={"text_encoder": self.text_encoder.save_pretrained,
                                   "tokenizer": self.tokenizer.save_pretrained, "vae": self.vae.save_pretrained,
                                   "scheduler": scheduler.save_pretrained, "model_index.json": None})

    def shift_time(self, t: torch.Tensor) -> torch.Tensor:
        """The scheduler's static time shift: t' = s t / (1 + (s - 1) t)."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    @torch.no_grad()
    def encode_text(self, prompts: list[str], *, num_references: int = 0) -> TextFeatures:
        """Qwen3 features of the second-to-last layer, pads stripped; omni segments are encoded separately."""
        return self.text_features(prompts, num_references=num_references)

    def text_features(self, prompts: list[str], *, num_references: int = 0) -> TextFeatures:
        """`encode_text` with gradient to the text encoder (for training one jointly with the transformer)."""
        per_sample = [omni_prompt_segments(p, num_references) for p in prompts]
        flat = [s for segments in per_sample for s in segments]
        batch = self.tokenizer(flat, padding=True, return_tensors="pt").to(self.device)
        mask = batch.attention_mask.bool()
        hidden = self.text_encoder(
            input_ids=batch.input_ids, attention_mask=mask, output_hidden_states=True
        ).hidden_states[-2]
        features = [hidden[i][mask[i]] for i in range(len(flat))]
        out, i = [], 0
        for segments in per_sample:
            out.append(features[i : i + len(segments)])
            i += len(segments)
        return TextFeatures(out, num_references)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B,3,H,W) -> normalised latents (B,C,H/f,W/f), the distribution's mode."""
        latents = self.vae.encode(images.to(device=self.vae.device, dtype=self.vae.dtype)).latent_dist.mode()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in about [-1, 1]; differentiable w.r.t. the latents."""
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(latents.to(self.vae.dtype)).sample

    def predict_velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, text: TextFeatures, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """v = eps - x0 for x_t at noise level t (paper convention, t=1 noise); `reference` is a clean latent."""
        check_conditioning(x_t, text, reference)
        wants_reference = reference is not None
        dtype = self.compute_dtype
        t_model = (1 - t).to(device=self.device, dtype=torch.float32).reshape(-1)  # t*1000 in bf16 would round
        targets = [x.unsqueeze(1).to(dtype) for x in x_t]
        if wants_reference:
            refs = [r.unsqueeze(1).to(dtype).detach() for r in reference]
            out = self.transformer(
                x=[[ref, target] for ref, target in zip(refs, targets)],  # the target must be last: omni returns it
                t=t_model,
                cap_feats=[[s.to(dtype) for s in segs] for segs in text.segments],
                siglip_feats=[None] * len(targets),
                image_noise_mask=[[0, 1]] * len(targets),
                return_dict=False,
            )[0]
        else:
            out = self.transformer(
                x=targets, t=t_model, cap_feats=[segs[0].to(dtype) for segs in text.segments], return_dict=False
            )[0]
        return -torch.stack([o.squeeze(1) for o in out]).to(x_t.dtype)  # Z-Image predicts x0 - eps
