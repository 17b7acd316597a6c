"""Pictures people would rather see than read: edit grids (input | instruction | output)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3,H,W) in [-1, 1] -> RGB PIL image."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def from_pil(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB PIL image -> (3,H,W) in [-1, 1], optionally resized to (width, height)."""
    image = image.convert("RGB")
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def _text_panel(text: str, height: int, width: int) -> Image.Image:
    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    wrapped = textwrap.fill(text, width=max(8, width // 7))
    draw.multiline_text((6, 6), wrapped, fill="black", font=font, spacing=3)
    return panel


def save_edit_grid(
    references: list[Image.Image], instructions: list[str], outputs: list[Image.Image], path: str | Path, cell: int = 192
) -> Path:
    """Write a PNG grid, one row per sample: reference | instruction | output."""
    if not (len(references) == len(instructions) == len(outputs)):
        raise ValueError("references, instructions and outputs must have the same length")
    grid = Image.new("RGB", (3 * cell, cell * len(references)), "white")
    for row, (ref, text, out) in enumerate(zip(references, instructions, outputs)):
        grid.paste(ref.resize((cell, cell)), (0, row * cell))
        grid.paste(_text_panel(text, cell, cell), (cell, row * cell))
        grid.paste(out.resize((cell, cell)), (2 * cell, row * cell))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def save_labelled_rows(rows: list[tuple[str, list[tuple[Image.Image, str]]]], path: str | Path,
                       cell: int = 96) -> Path:
    """Write a PNG grid, one row per (text, [(image, label), ...]): the text's panel, then each image with its label
    under it; rows may hold different numbers of images."""
    if not rows:
        raise ValueError("no rows to draw")
    strip = 14
    columns = 1 + max(len(images) for _, images in rows)
    grid = Image.new("RGB", (columns * cell, (cell + strip) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for row, (text, images) in enumerate(rows):
        top = row * (cell + strip)
        grid.paste(_text_panel(text, cell + strip, cell), (0, top))
        for column, (image, label) in enumerate(images, start=1):
            grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (column * cell, top))
            draw.text((column * cell + 3, top + cell + 1), label, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
