"""FLUX.2 klein adapter: `Flux2Transformer2DModel` + Qwen3 text encoder + `AutoencoderKLFlux2`, by path or hub id.

Latents are what the transformer sees, as an image: the VAE's 32-channel latent, 2x2-patchified to 128 channels and
normalised with the VAE's batch-norm statistics (so one latent cell is 16x16 pixels). Editing uses klein's native
image conditioning: the clean reference latent joins the sequence as extra image tokens after the target's, at
position ids (t=10, h, w, 0) while the target sits at (0, h, w, 0); only the target's tokens are returned.
klein's own convention already is the paper's (the transformer takes sigma = t, t=1 noise, and predicts
dx/dsigma = eps - x0), so the conversion at this boundary is the identity.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.backbones.base import (
    FrozenPartsBackbone,
    TextFeatures,
    check_conditioning,
    library_and_class,
    save_layout,
)

TEXT_HIDDEN_LAYERS = (9, 18, 27)  # Qwen3 hidden states the pipeline stacks into one token feature
TEXT_MAX_LENGTH = 512  # prompts are padded to this many tokens, pads included, as the pipeline does
REFERENCE_TIME_ID = 10  # position-id time coordinate of the first conditioning image
DEFAULT_IMAGE_SEQ_LEN = 4096  # the pipeline's default 1024x1024 pixels, 64x64 tokens
DEFAULT_NUM_STEPS = 50  # the pipeline's default number of steps


def pipeline_shift(image_seq_len: int, num_steps: int) -> float:
    """The static shift s = exp(mu) equal to the pipeline's dynamic (exponential) shift for this many target tokens
    and sampling steps: s / (s + 1/t - 1) == s t / (1 + (s - 1) t)."""
    return math.exp(compute_empirical_mu(image_seq_len=image_seq_len, num_steps=num_steps))


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), channel-major over each 2x2 patch (the pipeline's order)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return patches.reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, 4C, H, W) -> (B, C, 2H, 2W): the inverse of `patchify`."""
    b, c, h, w = latents.shape
    pixels = latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return pixels.reshape(b, c // 4, h * 2, w * 2)


def position_ids(time_id: int, height: int, width: int, length: int, device: torch.device) -> torch.Tensor:
    """(H*W*L, 4) RoPE position ids (time, row, column, index), row-major: an image is (t, H, W, 1), text (0,1,1,L)."""
    axes = torch.tensor([time_id]), torch.arange(height), torch.arange(width), torch.arange(length)
    return torch.cartesian_prod(*axes).to(device)


class Flux2KleinBackbone(FrozenPartsBackbone):
    """The FLUX.2 klein family behind the `Backbone` protocol (see `training.backbones.base`)."""

    pipeline = "Flux2KleinPipeline"  # the diffusers pipeline its checkpoints (and LoRA adapters) load in
    pipelines = (pipeline,)  # the pipelines whose checkpoints it loads

    def __init__(self, transformer, text_encoder, tokenizer, vae: AutoencoderKLFlux2,
                 scheduler: FlowMatchEulerDiscreteScheduler, shift: float, is_distilled: bool = False,
                 source: str | Path | None = None):
        super().__init__(transformer, text_encoder, tokenizer, vae, shift, source)
        self.scheduler = scheduler  # as loaded; checkpoints get `sampling_scheduler()`
        self.is_distilled = is_distilled
        self.latent_channels = transformer.config.in_channels
        # pixels per latent cell: VAE downsampling (x8 for klein) times the 2x2 patchification
        self.spatial_factor = 2 ** (len(vae.config.block_out_channels) - 1) * 2

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        transformer_dtype: torch.dtype | None = None, shift: float | None = None
                        ) -> Flux2KleinBackbone:
        """Load every component from a diffusers-layout directory or hub id (tiny or real: same code).

        `dtype` is for the frozen text encoder; the transformer takes `transformer_dtype` (default: `dtype`). The VAE
        stays float32. `shift` is the static time shift; by default the pipeline's for 1024x1024 pixels and 50 steps
        (see `pipeline_shift`: klein's shift depends on resolution and step count, the protocol's does not)."""
        from diffusers import DiffusionPipeline

        transformer = Flux2Transformer2DModel.from_pretrained(path, subfolder="transformer",
                                                              torch_dtype=transformer_dtype or dtype)
        text_encoder = AutoModelForCausalLM.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        vae = AutoencoderKLFlux2.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
        is_distilled = bool(DiffusionPipeline.load_config(str(path)).get("is_distilled", False))
        if shift is None:  # a checkpoint we wrote samples with its static shift; the released model's is dynamic
            shift = scheduler.config.shift if not scheduler.config.use_dynamic_shifting else \
                pipeline_shift(DEFAULT_IMAGE_SEQ_LEN, DEFAULT_NUM_STEPS)
        return cls(transformer, text_encoder, tokenizer, vae, scheduler, shift, is_distilled, source=path)

    def with_transformer(self, transformer) -> Flux2KleinBackbone:
        """A backbone sharing this one's text encoder and VAE with another transformer (teacher, fake score)."""
        backbone = Flux2KleinBackbone(transformer, self.text_encoder, self.tokenizer, self.vae, self.scheduler,
                                      self.shift, self.is_distilled, self.source)
        backbone.compute_dtype = self.compute_dtype
        return backbone

    def save_pretrained(self, out_dir: str | Path, transformer_state_dict: dict | None = None,
                        frozen_dir: str | Path | None = None) -> Path:
        """A diffusers-layout checkpoint `Flux2KleinPipeline.from_pretrained` loads: the transformer is written (from
        `transformer_state_dict` when given, e.g. gathered from FSDP shards); frozen components are linked, not
        copied: to the source when it is a local folder, else to `frozen_dir`, where they are written once."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        # Written, never linked: the static shift the generator samples with, so the pipeline samples as it does.
        self.sampling_scheduler().save_pretrained(out_dir / "scheduler")
        return save_layout(out_dir, self.transformer, transformer_state_dict, source=self.source, frozen_dir=frozen_dir,
                           frozen={"text_encoder": self.text_encoder.save_pretrained,
                                   "tokenizer": self.tokenizer.save_pretrained, "vae": self.vae.save_pretrained,
                                   "model_index.json": self._write_model_index})

    def sampling_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        """The scheduler with this backbone's static shift (what `shift_time` applies) instead of a dynamic one."""
        return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config, use_dynamic_shifting=False,
                                                           shift=self.shift)

    def _write_model_index(self, path: Path) -> None:
        """The pipeline's model_index.json (the transformer's class by name: FSDP or LoRA may wrap the module)."""
        import diffusers

        index = {"_class_name": "Flux2KleinPipeline", "_diffusers_version": diffusers.__version__,
                 "is_distilled": self.is_distilled, "scheduler": library_and_class(self.scheduler),
                 "text_encoder": library_and_class(self.text_encoder), "tokenizer": library_and_class(self.tokenizer),
                 "transformer": ["diffusers", "Flux2Transformer2DModel"], "vae": library_and_class(self.vae)}
        path.write_text(json.dumps(index, indent=2) + "\n")

    def shift_time(self, t: torch.Tensor) -> torch.Tensor:
        """The static time shift t' = s / (s + 1/t - 1) (= s t / (1 + (s - 1) t)), in the scheduler's exponential form
        so that the pipeline's sigmas are reproduced to the last bit."""
        return self.shift / (self.shift + (1 / t - 1))

    @torch.no_grad()
    def encode_text(self, prompts: list[str], *, num_references: int = 0,
                    reference_images: torch.Tensor | None = None) -> TextFeatures:
        """Qwen3 hidden states 9, 18 and 27 of the chat-formatted prompt, concatenated per token, padded to 512.
        klein reads a reference through its latent alone, so `reference_images` is not needed."""
        return self.text_features(prompts, num_references=num_references)

    def text_features(self, prompts: list[str], *, num_references: int = 0) -> TextFeatures:
        """`encode_text` with gradient to the text encoder. klein's prompt does not depend on the number of
        references (the images join as tokens), so one segment per sample; `num_references` is only recorded."""
        chats = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                    add_generation_prompt=True, enable_thinking=False)
                 for p in prompts]
        batch = self.tokenizer(chats, padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                               return_tensors="pt").to(self.text_encoder.device)
        language_model = self.text_encoder.get_decoder()  # the hidden states, without the vocabulary logits
        hidden = language_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                output_hidden_states=True, use_cache=False).hidden_states
        features = torch.cat([hidden[k] for k in TEXT_HIDDEN_LAYERS], dim=-1)  # (B, L, 3 D), layers in order
        return TextFeatures([[f] for f in features], num_references)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B,3,H,W) -> normalised patchified latents (B,128,H/16,W/16), the distribution's mode."""
        latents = self.vae.encode(images.to(device=self.vae.device, dtype=self.vae.dtype)).latent_dist.mode()
        mean, std = self._latent_statistics(latents)
        return (patchify(latents) - mean) / std

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised patchified latents -> images in about [-1, 1]; differentiable w.r.t. the latents."""
        latents = latents.to(self.vae.dtype)
        mean, std = self._latent_statistics(latents)
        return self.vae.decode(unpatchify(latents * std + mean)).sample

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE batch-norm's running mean and std over patchified channels, shaped (1, 128, 1, 1)."""
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    def predict_velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, text: TextFeatures, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """v = eps - x0 for x_t at noise level t (paper convention, t=1 noise); `reference` is a clean latent."""
        check_conditioning(x_t, text, reference)
        wants_reference = reference is not None
        dtype, device = self.compute_dtype, self.device
        batch, channels, height, width = x_t.shape
        tokens = x_t.to(device=device, dtype=dtype).flatten(2).transpose(1, 2)  # (B, H*W, C), row-major
        ids = position_ids(0, height, width, 1, device)
        if wants_reference:
            ref_height, ref_width = reference.shape[-2:]
            ref_tokens = reference.detach().to(device=device, dtype=dtype).flatten(2).transpose(1, 2)
            tokens = torch.cat([tokens, ref_tokens], dim=1)
            ids = torch.cat([ids, position_ids(REFERENCE_TIME_ID, ref_height, ref_width, 1, device)])
        prompt = torch.stack([segments[0] for segments in text.segments]).to(device=device, dtype=dtype)
        out = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=prompt,
            timestep=t.to(device=device, dtype=torch.float32).reshape(-1).expand(batch),  # sigma itself: t, not 1000 t
            img_ids=ids,
            txt_ids=position_ids(0, 1, 1, prompt.shape[1], device),
            guidance=None,
            return_dict=False,
        )[0]
        target = out[:, : height * width]
        return target.transpose(1, 2).reshape(batch, channels, height, width).to(x_t.dtype)
