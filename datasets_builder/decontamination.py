"""Keep benchmark images out of the corpus: a corpus image with the same bytes as a benchmark image (sha256), or one
whose perceptual hash lies within a Hamming distance of any benchmark image's (re-encoded, resized or lightly cropped
copies), becomes an `images_rejected` row with reason `benchmark_overlap` naming the benchmark case.

A 64-bit pHash (imagehash) survives re-encoding and resizing (distance <= 4) but not cropping: cutting 4 % off one
side moves it ~16 bits, as far as an unrelated photo. So each benchmark image is hashed under every crop of 0, 3 or 6 %
per side (81 hashes); a copy cut by up to ~7 % per side, resized and re-encoded then lies within 8 bits of one of
them, while unrelated photos stay 16 or more away (measured on the builder's sample photos).
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Iterable

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image

from schemas import IMAGES_REJECTED

CROP_STEPS = (0.0, 0.03, 0.06)  # fraction cut from each side; every combination over the four sides is hashed
CROPS = tuple(itertools.product(CROP_STEPS, repeat=4))  # (left, top, right, bottom)
DEFAULT_MAX_DISTANCE = 10  # bits of 64
HASHES_SCHEMA = pa.schema([("benchmark", pa.string()), ("case", pa.string()), ("sha256", pa.string()),
                           ("crop", pa.string()), ("phash", pa.uint64())])
_CHUNK = 512  # corpus images compared at once (memory: chunk x benchmark hashes bytes)


def perceptual_hash(image: Image.Image) -> int:
    """The image's 64-bit pHash as an integer."""
    bits = imagehash.phash(image.convert("RGB")).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def _cropped(image: Image.Image, crop: tuple[float, ...]) -> Image.Image:
    left, top, right, bottom = crop
    width, height = image.size
    return image.crop((round(left * width), round(top * height), width - round(right * width),
                       height - round(bottom * height)))


def hash_benchmark_images(images: Iterable[tuple[str, str, bytes]]) -> pa.Table:
    """(benchmark, case, encoded image) -> one row per crop of each image: its sha256 and pHash."""
    rows = []
    for benchmark, case, data in images:
        digest = hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
        for crop in CROPS:
            rows.append({"benchmark": benchmark, "case": case, "sha256": digest,
                         "crop": "l{:.0%} t{:.0%} r{:.0%} b{:.0%}".format(*crop),
                         "phash": perceptual_hash(_cropped(image, crop))})
    return pa.Table.from_pylist(rows, schema=HASHES_SCHEMA)


def find_overlaps(images: pa.Table, hashes: pa.Table, max_distance: int = DEFAULT_MAX_DISTANCE) -> dict[str, str]:
    """image_id -> what it matches, for the corpus images (`image_id` = sha256 of the original bytes, `image` = the
    stored bytes) that equal a benchmark image or lie within `max_distance` pHash bits of one of its crops."""
    if not len(images) or not len(hashes):
        return {}
    names = [f"{b}/{c}" for b, c in zip(hashes.column("benchmark").to_pylist(), hashes.column("case").to_pylist())]
    exact = dict(zip(hashes.column("sha256").to_pylist(), names))
    reference = hashes.column("phash").to_numpy()
    crops = hashes.column("crop").to_pylist()
    ids, data = images.column("image_id").to_pylist(), images.column("image").to_pylist()
    found = {i: f"same bytes as {exact[i]}" for i in ids if i in exact}
    for start in range(0, len(ids), _CHUNK):
        chunk = [(i, d) for i, d in zip(ids[start:start + _CHUNK], data[start:start + _CHUNK]) if i not in found]
        if not chunk:
            continue
        corpus = np.array([perceptual_hash(Image.open(io.BytesIO(d))) for _, d in chunk], dtype=np.uint64)
        distances = np.bitwise_count(corpus[:, None] ^ reference[None, :])
        nearest = distances.argmin(axis=1)
        for (image_id, _), j, distance in zip(chunk, nearest, distances[np.arange(len(chunk)), nearest]):
            if distance <= max_distance:
                found[image_id] = f"looks like {names[j]} (pHash {distance} bits from its crop {crops[j]})"
    return found


def reject_overlaps(images: pa.Table, shard: str, hashes: pa.Table,
                    max_distance: int = DEFAULT_MAX_DISTANCE) -> tuple[pa.Table, pa.Table]:
    """Split a shard's images into those kept and `benchmark_overlap` rejects (IMAGES_REJECTED rows)."""
    found = find_overlaps(images, hashes, max_distance)
    keep = pa.array([i not in found for i in images.column("image_id").to_pylist()], pa.bool_())
    rejects = [dict(source=row["source"], shard=shard, reason="benchmark_overlap", image_id=row["image_id"],
                    detail=found[row["image_id"]])
               for row in images.select(["image_id", "source"]).to_pylist() if row["image_id"] in found]
    return images.filter(keep), IMAGES_REJECTED.to_arrow(rejects)
