"""Checkpoints: the generator in diffusers layout (what `npedit edit` loads), full state for exact resume, config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

LATEST = "latest"


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step:07d}"


def save_checkpoint(out_dir: Path, step: int, generator, state: dict, config_json: str, keep: int = 3) -> Path:
    """Write into a staging folder, then rename: a killed save never leaves a half checkpoint marked latest.
    Only the newest `keep` checkpoints stay on disk."""
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
    for old in complete_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = out_dir / "checkpoints"
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if not p.name.endswith(".partial") and (p / "state.pt").exists())


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint `latest` names, else the newest complete one; None only when there is none at all."""
    pointer = out_dir / "checkpoints" / LATEST
    if pointer.exists():
        path = pointer.parent / pointer.read_text().strip()
        if (path / "state.pt").exists():
            return path
    complete = complete_checkpoints(out_dir)
    return complete[-1] if complete else None


def load_state(path: Path) -> dict:
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
