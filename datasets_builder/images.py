"""Decode and normalise fetched images: every input ends as an `images` row or an `images_rejected` row."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas import IMAGES, IMAGES_REJECTED, ImageRejectReason

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on accepted images and on the stored, normalised copy."""

    min_side: int = 32
    max_pixels: int = 40_000_000  # larger headers are rejected before any pixel is decoded
    max_stored_side: int = 1024
    jpeg_quality: int = 95


@dataclass(frozen=True)
class Normalised:
    image_id: str
    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    format: str


@dataclass(frozen=True)
class Rejected:
    reason: ImageRejectReason
    detail: str
    image_id: str | None = None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white, 16-bit data is scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def normalise_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Normalised | Rejected:
    """Decode bytes, apply EXIF orientation, convert to RGB, bound the size; or say why not."""
    image_id = sha256_hex(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Rejected(ImageRejectReason.TOO_LARGE, str(exc), image_id)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return Rejected(ImageRejectReason.DECODE_ERROR, f"{type(exc).__name__}: {exc}", image_id)
    width, height = image.size
    if image.format not in ACCEPTED_FORMATS:
        return Rejected(ImageRejectReason.UNSUPPORTED, f"format {image.format}", image_id)
    if width * height > limits.max_pixels:
        return Rejected(ImageRejectReason.TOO_LARGE, f"{width}x{height} exceeds {limits.max_pixels} pixels", image_id)
    if min(width, height) < limits.min_side:
        return Rejected(ImageRejectReason.TOO_SMALL, f"{width}x{height} is below {limits.min_side} px", image_id)
    try:
        image.seek(0)  # animated images: the first frame
        image.load()
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    except Exception as exc:  # noqa: BLE001 - any decoder failure of one image is that image's reject, not a crash
        return Rejected(ImageRejectReason.DECODE_ERROR, f"{type(exc).__name__}: {exc}", image_id)
    rgb.thumbnail((limits.max_stored_side, limits.max_stored_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=limits.jpeg_quality)
    return Normalised(image_id, buffer.getvalue(), rgb.width, rgb.height, width, height, image.format)


def vlm_view(images: pa.Table, max_side: int, jpeg_quality: int = 90) -> pa.Table:
    """`image_id` and `image` as the VLM sees them: each image larger than `max_side` downscaled (aspect kept) and
    JPEG-encoded, once, for every stage that asks about it; smaller images pass through byte for byte."""
    views = []
    for data in images.column("image").to_pylist():
        image = Image.open(io.BytesIO(data))
        if max(image.size) <= max_side:
            views.append(data)
            continue
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image.draft("RGB", size)  # a JPEG decodes at the smallest DCT scale still covering `size`: 4x less work at 1/2
        image = image.convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=jpeg_quality)
        views.append(buffer.getvalue())
    return pa.table({"image_id": images.column("image_id"), "image": pa.array(views, pa.binary())})


def normalise_fetched(fetched: pa.Table, shard: str, limits: ImageLimits = ImageLimits()) -> tuple[pa.Table, pa.Table]:
    """Turn one fetched shard (url, caption, status, error_message, bytes) into (images, images_rejected).

    Duplicates within the shard (same original bytes) are rejected as `duplicate`, keeping the first by source order.
    """
    kept, rejected, seen = [], [], {}
    rows = sorted(fetched.to_pylist(), key=lambda r: r["source"])
    for row in rows:
        source = row["source"]
        if row["status"] == ImageRejectReason.UNSUPPORTED:  # a listed file never fetched (fetch.list_folder)
            rejected.append(dict(source=source, shard=shard, reason="unsupported", detail=row["error_message"] or ""))
            continue
        if row["status"] != "success" or row["data"] is None:
            rejected.append(dict(source=source, shard=shard, reason="http_error", detail=row["error_message"] or ""))
            continue
        result = normalise_image(row["data"], limits)
        if isinstance(result, Rejected):
            rejected.append(
                dict(source=source, shard=shard, reason=result.reason.value, detail=result.detail,
                     image_id=result.image_id)
            )
        elif result.image_id in seen:
            rejected.append(
                dict(source=source, shard=shard, reason="duplicate", detail=f"same bytes as {seen[result.image_id]}",
                     image_id=result.image_id)
            )
        else:
            seen[result.image_id] = source
            kept.append(
                dict(image_id=result.image_id, source=source, width=result.width, height=result.height,
                     original_width=result.original_width, original_height=result.original_height,
                     format=result.format, shard=shard, image=result.data, source_caption=row.get("caption"))
            )
    return IMAGES.to_arrow(kept), IMAGES_REJECTED.to_arrow(rejected)
