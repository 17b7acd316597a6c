"""Real odd and broken image files, made on the fly, with the outcome each must have."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "datasets_builder" / "sample_images"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int = 40_000, height: int = 40_000) -> bytes:
    """A PNG whose header claims width x height; its pixel data is a few bytes (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (48, 1))
    return _save(Image.fromarray(ramp), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green")]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    image = Image.new("RGB", (80, 40), "orange")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _save(image, "JPEG", exif=exif)


def rgba_png() -> bytes:
    image = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    return _save(image, "PNG")


def odd_files() -> dict[str, tuple[bytes, str]]:
    """file name -> (bytes, expected outcome: 'ok' or a reject reason)."""
    good = (SAMPLES / "astronaut.jpg").read_bytes()
    return {
        "good.jpg": (good, "ok"),
        "good_copy.jpg": (good, "duplicate"),
        "truncated.jpg": (good[: len(good) // 2], "decode_error"),
        "html_as_image.jpg": (b"<!doctype html><html><body>Not found</body></html>", "decode_error"),
        "one_pixel.png": (_save(Image.new("RGB", (1, 1), "white"), "PNG"), "too_small"),
        "huge_header.png": (huge_png_header(), "too_large"),
        "cmyk.jpg": (_save(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"), "ok"),
        "sixteen_bit.png": (sixteen_bit_png(), "ok"),
        "animated.gif": (animated_gif(), "ok"),
        "rotated.jpg": (exif_rotated_jpeg(), "ok"),
        "transparent.png": (rgba_png(), "ok"),
        "empty.jpg": (b"", "decode_error"),
    }
