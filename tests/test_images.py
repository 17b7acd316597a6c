"""Decoding and normalisation: odd images are normalised, broken ones become rejects with a reason."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from datasets_builder.images import (ImageLimits, Normalised, Rejected, normalise_fetched, normalise_image, sha256_hex,
                                     vlm_view)
from odd_images import exif_rotated_jpeg, huge_png_header, odd_files, sixteen_bit_png


@pytest.mark.parametrize("name", [n for n, (_, outcome) in odd_files().items() if outcome != "duplicate"])
def test_each_odd_file_has_its_outcome(name):
    data, expected = odd_files()[name]
    result = normalise_image(data)
    if expected == "ok":
        assert isinstance(result, Normalised), result
        decoded = Image.open(io.BytesIO(result.data))
        assert decoded.mode == "RGB" and decoded.format == "JPEG"
        assert result.image_id == sha256_hex(data)
    else:
        assert isinstance(result, Rejected) and result.reason.value == expected, result
        assert result.detail


def test_huge_header_is_rejected_without_decoding_pixels():
    result = normalise_image(huge_png_header())
    assert isinstance(result, Rejected) and result.reason.value == "too_large"


def test_exif_orientation_is_applied():
    result = normalise_image(exif_rotated_jpeg())
    assert (result.width, result.height) == (40, 80)
    assert (result.original_width, result.original_height) == (80, 40)


def test_sixteen_bit_png_is_scaled_not_clipped():
    result = normalise_image(sixteen_bit_png())
    row = np.asarray(Image.open(io.BytesIO(result.data)).convert("L"))[24]
    assert row[0] < 10 and row[-1] > 245 and 100 < row[32] < 160


def test_large_images_are_bounded():
    big = io.BytesIO()
    Image.new("RGB", (3000, 1500), "teal").save(big, format="PNG")
    result = normalise_image(big.getvalue(), ImageLimits(max_stored_side=512))
    assert (result.width, result.height) == (512, 256)


def test_normalise_fetched_accounts_for_every_row():
    files = odd_files()
    table = pa.table({
        "source": [f"http://h/{n}" for n in files] + ["http://h/missing.jpg"],
        "caption": [None] * (len(files) + 1),
        "status": ["success"] * len(files) + ["failed_to_download"],
        "error_message": [None] * len(files) + ["HTTP Error 404: File not found"],
        "data": [d for d, _ in files.values()] + [None],
    })
    images, rejected = normalise_fetched(table, "s0")
    assert images.num_rows + rejected.num_rows == table.num_rows
    reasons = dict(zip(rejected.column("source").to_pylist(), rejected.column("reason").to_pylist()))
    for name, (_, expected) in files.items():
        if expected != "ok":
            assert reasons[f"http://h/{name}"] == expected, name
    assert reasons["http://h/missing.jpg"] == "http_error"
    assert len(set(images.column("image_id").to_pylist())) == images.num_rows


def test_vlm_view_downscales_large_images_and_passes_small_ones_byte_for_byte():
    large, small = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (1024, 768), "teal").save(large, format="JPEG")
    Image.new("RGB", (300, 200), "olive").save(small, format="JPEG")
    images = pa.table({"image_id": ["large", "small"], "image": [large.getvalue(), small.getvalue()],
                       "width": [1024, 300]})
    view = vlm_view(images, 512)
    assert view.column_names == ["image_id", "image"] and view.column("image_id").to_pylist() == ["large", "small"]
    assert Image.open(io.BytesIO(view.column("image")[0].as_py())).size == (512, 384)
    assert view.column("image")[1].as_py() == small.getvalue()
