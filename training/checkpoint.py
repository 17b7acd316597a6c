"""Checkpoints: the generator in diffusers layout (what `npedit edit` loads), full state for exact resume, config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

LATEST = "latest"


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step:07d}"


def save_checkpoint(out_dir: Path, step: int, generator, state: dict, config_json: str) -> Path:
    """Write into a staging folder, then rename: a killed save never leaves a half checkpoint marked latest."""
    final = checkpoint_dir(out_dir, step)
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    generator.save_pretrained(staging / "generator", transformer_state_dict=state["generator"])
    torch.save(state, staging / "state.pt")
    (staging / "config.json").write_text(config_json)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    pointer = out_dir / "checkpoints" / LATEST
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(final.name)
    os.replace(tmp, pointer)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = out_dir / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.pt").exists() else None


def load_state(path: Path) -> dict:
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
