"""Z-Image adapter: `ZImageTransformer2DModel` + Qwen3 text encoder + 16-channel VAE, loaded by path or hub id.

Editing uses the transformer's native *omni* mode: the reference latent is a clean extra image in the token sequence
(t=1 "clean" embedding in Z-Image's convention), the noisy target comes last, and only the target is returned.
A checkpoint in `ZImageOmniPipeline`'s layout also reads each reference through its SigLIP2 image encoder, as that
pipeline does (the processor on the 8-bit image, the patch grid's tokens); one without it reads the latent alone.
Z-Image's own convention (t_model = 1 - sigma, output = x0 - eps) is converted to the paper's here and only here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from transformers import AutoModel, AutoTokenizer

from training.backbones.base import (
    FrozenPartsBackbone,
    TextFeatures,
    check_conditioning,
    library_and_class,
    save_layout,
)


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

    pipelines = ("ZImagePipeline", "ZImageOmniPipeline")  # the diffusers pipelines whose checkpoints it loads

    def __init__(self, transformer, text_encoder, tokenizer, vae: AutoencoderKL, shift: float,
                 source: str | Path | None = None, siglip=None, siglip_processor=None):
        super().__init__(transformer, text_encoder, tokenizer, vae, shift, source)
        if (siglip is None) != (transformer.config.siglip_feat_dim is None):
            raise ValueError("a Z-Image transformer with siglip_feat_dim needs a SigLIP image encoder, and only it")
        self.siglip = None if siglip is None else siglip.requires_grad_(False).eval()
        self.siglip_processor = siglip_processor
        # the diffusers pipeline its checkpoints (and LoRA adapters) load in
        self.pipeline = "ZImagePipeline" if siglip is None else "ZImageOmniPipeline"
        self.latent_channels = vae.config.latent_channels
        # pixels per latent-patch side: VAE downsampling (x8 for Z-Image) times the patch size (2): multiples of 16
        self.patch_size = transformer.config.all_patch_size[0]  # 2 in the released models
        self.spatial_factor = 2 ** (len(vae.config.block_out_channels) - 1) * self.patch_size

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        transformer_dtype: torch.dtype | None = None) -> ZImageBackbone:
        """Load every component from a diffusers-layout directory or hub id (tiny or real: same code), the SigLIP2
        encoder and its processor too when the layout is `ZImageOmniPipeline`'s.

        `dtype` is for the frozen text (and image) encoder; the transformer takes `transformer_dtype` (default:
        `dtype`), e.g. float32 master weights for training while the frozen parts run in bfloat16. The VAE stays
        float32."""
        import transformers

        transformer = ZImageTransformer2DModel.from_pretrained(path, subfolder="transformer",
                                                               torch_dtype=transformer_dtype or dtype)
        text_encoder = AutoModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
        index = DiffusionPipeline.load_config(str(path))
        siglip = processor = None
        if "siglip" in index:  # the processor class the pipeline itself would load
            siglip = AutoModel.from_pretrained(path, subfolder="siglip", dtype=dtype)
            processor = getattr(transformers, index["siglip_processor"][1]).from_pretrained(
                path, subfolder="siglip_processor")
        return cls(transformer, text_encoder, tokenizer, vae, shift=float(scheduler.config.shift), source=path,
                   siglip=siglip, siglip_processor=processor)

    def with_transformer(self, transformer) -> ZImageBackbone:
        """A backbone sharing this one's text encoder, image encoder and VAE with another transformer (teacher, fake
        score)."""
        backbone = ZImageBackbone(transformer, self.text_encoder, self.tokenizer, self.vae, self.shift, self.source,
                                  self.siglip, self.siglip_processor)
        backbone.compute_dtype = self.compute_dtype
        return backbone

    def save_pretrained(self, out_dir: str | Path, transformer_state_dict: dict | None = None,
                        frozen_dir: str | Path | None = None) -> Path:
        """A diffusers-layout checkpoint (`ZImagePipeline`'s, or `ZImageOmniPipeline`'s with the SigLIP2 encoder):
        the transformer is written (from `transformer_state_dict` when given, e.g. gathered from FSDP shards); frozen
        components are linked, not copied: to the source when it is a local folder, else to `frozen_dir`, where they
        are written once (a hub id as the base costs one copy per run)."""
        scheduler = FlowMatchEulerDiscreteScheduler(shift=self.shift, use_dynamic_shifting=False)
        frozen = {"text_encoder": self.text_encoder.save_pretrained, "tokenizer": self.tokenizer.save_pretrained,
                  "vae": self.vae.save_pretrained, "scheduler": scheduler.save_pretrained}
        if self.siglip is not None:
            frozen |= {"siglip": self.siglip.save_pretrained, "siglip_processor": self.siglip_processor.save_pretrained}
        return save_layout(out_dir, self.transformer, transformer_state_dict, source=self.source, frozen_dir=frozen_dir,
                           frozen={**frozen, "model_index.json": self._write_model_index})

    def _write_model_index(self, path: Path) -> None:
        """The pipeline's model_index.json (the transformer's class by name: FSDP or LoRA may wrap the module)."""
        import diffusers

        index = {"_class_name": self.pipeline, "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                 "text_encoder": library_and_class(self.text_encoder), "tokenizer": library_and_class(self.tokenizer),
                 "transformer": ["diffusers", "ZImageTransformer2DModel"], "vae": library_and_class(self.vae)}
        if self.siglip is not None:
            index |= {"siglip": library_and_class(self.siglip),
                      "siglip_processor": library_and_class(self.siglip_processor)}
        path.write_text(json.dumps(index, indent=2) + "\n")

    def shift_time(self, t: torch.Tensor) -> torch.Tensor:
        """The scheduler's static time shift: t' = s t / (1 + (s - 1) t)."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    @torch.no_grad()
    def encode_text(self, prompts: list[str], *, num_references: int = 0,
                    reference_images: torch.Tensor | None = None) -> TextFeatures:
        """Qwen3 features of the second-to-last layer, pads stripped; omni segments are encoded separately. With a
        SigLIP2 encoder, editing prompts need their `reference_images` (B,3,H,W) in [-1, 1]."""
        return self.text_features(prompts, num_references=num_references, reference_images=reference_images)

    def text_features(self, prompts: list[str], *, num_references: int = 0,
                      reference_images: torch.Tensor | None = None) -> TextFeatures:
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
        tokens = None
        if self.siglip is not None and num_references:
            if reference_images is None or len(reference_images) != len(prompts) or num_references != 1:
                raise ValueError("this Z-Image reads references through SigLIP2: pass one reference image per prompt "
                                 "(reference_images)")
            tokens = [[t] for t in self.reference_tokens(reference_images)]
        return TextFeatures(out, num_references, tokens)

    @torch.no_grad()
    def reference_tokens(self, images: torch.Tensor) -> list[torch.Tensor]:
        """SigLIP2 tokens (h, w, C) of each image in [-1, 1], as `ZImageOmniPipeline` computes them: its processor on
        the 8-bit image, the last hidden state cut to the patch grid."""
        pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        inputs = self.siglip_processor(images=list(pixels.permute(0, 2, 3, 1).cpu().numpy()), return_tensors="pt")
        hidden = self.siglip(**inputs.to(self.siglip.device)).last_hidden_state
        return [h[: int(hh) * int(ww)].reshape(int(hh), int(ww), -1)
                for h, (hh, ww) in zip(hidden, inputs["spatial_shapes"])]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B,3,H,W) -> normalised float32 latents (B,C,H/f,W/f), the distribution's mode
        (normalised in the VAE's dtype, as the pipelines do)."""
        latents = self.vae.encode(images.to(device=self.vae.device, dtype=self.vae.dtype)).latent_dist.mode()
        return ((latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor).float()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in about [-1, 1]; differentiable w.r.t. the latents."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(latents).sample  # de-normalised in the VAE's dtype, as the pipelines do

    def predict_velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, text: TextFeatures, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """v = eps - x0 for x_t at noise level t (paper convention, t=1 noise); `reference` is a clean latent."""
        check_conditioning(x_t, text, reference)
        wants_reference = reference is not None
        if wants_reference and (self.siglip is not None) != (text.reference_tokens is not None):
            raise ValueError("text must carry the references' SigLIP2 tokens exactly when the backbone has SigLIP2 "
                             "(encode_text(..., reference_images=...))")
        dtype = self.compute_dtype
        t_model = (1 - t).to(device=self.device, dtype=torch.float32).reshape(-1)  # t*1000 in bf16 would round
        targets = [x.unsqueeze(1).to(dtype) for x in x_t]
        if wants_reference:
            refs = [r.unsqueeze(1).to(dtype).detach() for r in reference]
            out = self.transformer(
                x=[[ref, target] for ref, target in zip(refs, targets)],  # the target must be last: omni returns it
                t=t_model,
                cap_feats=[[s.to(dtype) for s in segs] for segs in text.segments],
                siglip_feats=[None] * len(targets) if text.reference_tokens is None else
                [[r.to(dtype) for r in refs] + [None] for refs in text.reference_tokens],  # the target has none
                image_noise_mask=[[0, 1]] * len(targets),
                patch_size=self.patch_size,
                return_dict=False,
            )[0]
        else:
            out = self.transformer(
                x=targets, t=t_model, cap_feats=[segs[0].to(dtype) for segs in text.segments],
                patch_size=self.patch_size, return_dict=False,
            )[0]
        return -torch.stack([o.squeeze(1) for o in out]).to(x_t.dtype)  # Z-Image predicts x0 - eps
