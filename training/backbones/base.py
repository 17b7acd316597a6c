"""The backbone protocol: one time convention (the paper's) at the boundary of every generator family.

Convention: x_t = (1 - t) * x0 + t * eps, t = 1 is pure noise, velocity v = eps - x0, so x0 = x_t - t * v.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch


@dataclass(frozen=True)
class TextFeatures:
    """Encoded prompts: per sample, the list of caption segments the transformer consumes, and, for a backbone that
    also reads its references through an image encoder (Z-Image omni's SigLIP), each reference's tokens."""

    segments: list[list[torch.Tensor]]
    num_references: int
    reference_tokens: list[list[torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.segments)

    def repeat(self, times: int) -> TextFeatures:
        tokens = None if self.reference_tokens is None else [r for _ in range(times) for r in self.reference_tokens]
        return TextFeatures([s for _ in range(times) for s in self.segments], self.num_references, tokens)

    def concat(self, other: TextFeatures) -> TextFeatures:
        if other.num_references != self.num_references:
            raise ValueError("cannot concatenate text features encoded for different numbers of references")
        if (other.reference_tokens is None) != (self.reference_tokens is None):
            raise ValueError("cannot concatenate text features encoded with and without reference images")
        tokens = None if self.reference_tokens is None else self.reference_tokens + other.reference_tokens
        return TextFeatures(self.segments + other.segments, self.num_references, tokens)


class Backbone(Protocol):
    """A flow-matching DiT + text encoder + VAE, optionally conditioned on a clean reference image."""

    latent_channels: int
    spatial_factor: int

    def encode_text(self, prompts: list[str], *, num_references: int = 0,
                    reference_images: torch.Tensor | None = None) -> TextFeatures:
        """Prompts for text-to-image (0) or editing (1 reference); `reference_images` (B,3,H,W) in [-1, 1] are the
        references' pixels, read by backbones that encode references beyond their latent (ignored by the others)."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...

    def predict_velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, text: TextFeatures, reference: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def shift_time(self, t: torch.Tensor) -> torch.Tensor: ...


class FrozenPartsBackbone(torch.nn.Module):
    """What every adapter holds: a trainable transformer beside a frozen text encoder and VAE, the static time shift
    its sampler uses, and where the frozen parts came from (checkpoints link to it)."""

    def __init__(self, transformer, text_encoder, tokenizer, vae, shift: float, source: str | Path | None = None):
        super().__init__()
        self.source = source
        self.compute_dtype = next(transformer.parameters()).dtype  # FSDP2 mixed precision sets it lower
        self.transformer = transformer
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.shift = shift

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device


def check_conditioning(x_t: torch.Tensor, text: TextFeatures, reference: torch.Tensor | None) -> None:
    """One prompt per latent, encoded for a reference exactly when one is given."""
    if len(text) != x_t.shape[0]:
        raise ValueError(f"{len(text)} prompts for a batch of {x_t.shape[0]} latents")
    if (reference is not None) != (text.num_references > 0):
        raise ValueError("text must be encoded with num_references=1 exactly when a reference is given")


def library_and_class(component) -> list[str]:
    """A component's entry in a diffusers model_index.json: its library and class name."""
    return [type(component).__module__.split(".")[0], type(component).__name__]


def save_layout(out_dir: str | Path, transformer, transformer_state_dict: dict | None, *,
                source: str | Path | None, frozen_dir: str | Path | None,
                frozen: dict[str, Callable[[Path], object] | None]) -> Path:
    """A diffusers-layout checkpoint folder: the transformer is written (from `transformer_state_dict` when given, e.g.
    gathered from FSDP shards); each frozen component (name -> its writer, None: only ever linked) is linked, not
    copied: to the source when it is a local folder holding it, else to `frozen_dir`, where it is written once (a hub
    id as the base costs one copy per run), else written in place."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if transformer_state_dict is None:
        transformer.save_pretrained(out_dir / "transformer")
    else:
        from safetensors.torch import save_file

        (out_dir / "transformer").mkdir(exist_ok=True)
        transformer.save_config(out_dir / "transformer")
        tensors = {k: v.detach().contiguous() for k, v in transformer_state_dict.items()}
        save_file(tensors, out_dir / "transformer" / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    source = Path(source) if source is not None and Path(source).is_dir() else None
    holder = Path(frozen_dir) if frozen_dir is not None else None
    for name, write in frozen.items():
        target = out_dir / name
        if target.exists() or target.is_symlink():
            continue
        if source is not None and (source / name).exists():
            target.symlink_to((source / name).resolve())
        elif write is not None and holder is not None:
            if not (holder / name).exists():
                holder.mkdir(parents=True, exist_ok=True)
                write(holder / name)
            target.symlink_to((holder / name).resolve())
        elif write is not None:
            write(target)
    return out_dir


def x0_from_velocity(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 = x_t - t * v under x_t = (1 - t) x0 + t eps, v = eps - x0."""
    return x_t - _per_sample(t, x_t) * v


def guided_velocity(v_pos: torch.Tensor, v_neg: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: v_neg + s (v_pos - v_neg); s is one scale or one per sample."""
    if isinstance(scale, torch.Tensor):
        scale = _per_sample(scale, v_pos)
    return v_neg + scale * (v_pos - v_neg)


def noise_to(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * eps


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(device=like.device, dtype=like.dtype)
