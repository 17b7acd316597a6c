"""Table contracts: valid rows round-trip; every malformed row is rejected with a message naming column and value."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pyarrow as pa
import pytest

import schemas
from schemas import ALL_TABLES, EDIT_TYPES, SchemaError

ID = "a" * 64
PROV = {"model_id": "tiny/qwen2_5_vl", "prompt_version": "p1", "sampling": "{}", "backend": "transformers"}

VALID_ROWS = {
    "images": dict(
        image_id=ID, source="http://x/a.jpg", width=64, height=48, original_width=640, original_height=480,
        format="JPEG", shard="00000", image=b"\xff\xd8", source_caption=None,
    ),
    "images_rejected": dict(source="http://x/b.jpg", shard="00000", reason="http_error", detail="HTTP Error 404"),
    "captions": dict(**PROV, image_id=ID, caption="a boat on a lake"),
    "edit_proposals": dict(**PROV, proposal_id=ID, image_id=ID, edit_type="insertion", instruction="Add a bird"),
    "edit_instructions": dict(
        **PROV, proposal_id=ID, image_id=ID, edit_type="remove", instruction="Remove the car", is_valid=True,
        reasoning="the car is visible", edited_caption="an empty street", reference_caption="a car on a street",
        target_object="the red car",
    ),
    "objects": dict(**PROV, image_id=ID, is_object_centric=True, object_name="mug", reasoning="one centred mug"),
    "background_prompts": dict(**PROV, image_id=ID, index=0, object_name="mug", background_caption="on a beach"),
    "vlm_rejects": dict(**PROV, request_hash=ID, stage="propose", image_id=ID, raw_text="{", error="bad json"),
    "snapshots": dict(
        snapshot_id=3, created_at=dt.datetime(2026, 11, 25, tzinfo=dt.UTC), parent=2, row_counts={"images": 10},
        content_hash=ID, config="{}", schema_version=1, tag="v1", message="first",
    ),
}

# (table, column, bad value, words the message must contain)
MALFORMED = [
    ("images", "image_id", "not-a-hash", "sha256"),
    ("images", "width", 0, "below 1"),
    ("images", "height", "tall", "int64"),
    ("images", "shard", None, "required"),
    ("images_rejected", "reason", "gremlins", "not one of"),
    ("captions", "caption", "   ", "empty"),
    ("captions", "backend", "", "empty"),
    ("edit_proposals", "edit_type", "colour", "not one of"),
    ("edit_proposals", "proposal_id", ID.upper(), "sha256"),
    ("edit_instructions", "is_valid", "maybe", "bool"),
    ("edit_instructions", "edited_caption", "", "empty"),
    ("edit_instructions", "target_object", "  ", "empty"),
    ("objects", "object_name", "", "empty"),
    ("background_prompts", "index", -1, "below 0"),
    ("vlm_rejects", "stage", "dream", "not one of"),
    ("snapshots", "row_counts", ["images"], "map"),
    ("snapshots", "schema_version", 0, "below 1"),
]


def test_every_table_has_a_valid_example():
    assert set(VALID_ROWS) == set(ALL_TABLES)


@pytest.mark.parametrize("name", sorted(VALID_ROWS))
def test_valid_row_round_trips(name):
    spec = ALL_TABLES[name]
    table = spec.to_arrow([VALID_ROWS[name]])
    assert table.schema.equals(spec.schema)
    assert table.to_pylist(maps_as_pydicts="strict")[0] == {**{f.name: None for f in spec.schema}, **VALID_ROWS[name]}
    assert spec.validate(table).num_rows == 1


@pytest.mark.parametrize(("name", "column", "value", "words"), MALFORMED)
def test_malformed_row_is_rejected_naming_column_and_value(name, column, value, words):
    good = VALID_ROWS[name]
    rows = [good, {**good, column: value}]
    with pytest.raises(SchemaError) as info:
        ALL_TABLES[name].to_arrow(rows)
    message = str(info.value)
    assert f"{name}.{column}" in message and "row 1" in message and words in message
    if value not in (None, "", "   "):
        assert repr(value)[:20] in message
    assert info.value.column == column and info.value.row == 1


def test_validate_names_missing_extra_and_mistyped_columns():
    spec = schemas.EDIT_PROPOSALS
    table = spec.to_arrow([VALID_ROWS["edit_proposals"]])
    with pytest.raises(SchemaError, match=r"edit_proposals\.instruction is missing"):
        spec.validate(table.drop_columns(["instruction"]))
    with pytest.raises(SchemaError, match=r"edit_proposals\.score is not a column"):
        spec.validate(table.append_column("score", pa.array([1.0])))
    with pytest.raises(SchemaError, match=r"edit_proposals\.edit_type row 0: 'bg' is not one of"):
        spec.validate(table.set_column(table.schema.get_field_index("edit_type"), "edit_type", pa.array(["bg"])))


def test_target_object_is_a_nullable_string_rows_of_schema_1_omit():
    spec = schemas.EDIT_INSTRUCTIONS
    field = spec.schema.field("target_object")
    assert field.type == pa.string() and field.nullable and field.metadata[b"doc"]
    schema_1_row = {k: v for k, v in VALID_ROWS["edit_instructions"].items() if k != "target_object"}
    style = {**schema_1_row, "edit_type": "style", "instruction": "Make it a watercolor", "target_object": None}
    table = spec.to_arrow([VALID_ROWS["edit_instructions"], schema_1_row, style])
    assert table.column("target_object").to_pylist() == ["the red car", None, None]
    assert spec.validate(table).equals(table)
    assert schemas.SCHEMA_VERSION == 2


def test_unknown_key_in_row_is_rejected():
    with pytest.raises(SchemaError, match=r"captions\.confidence row 0"):
        schemas.CAPTIONS.to_arrow([{**VALID_ROWS["captions"], "confidence": 0.9}])


def test_edit_types_are_the_papers_eight():
    assert EDIT_TYPES == (
        "insertion", "replace", "local_texture", "shape_change", "style", "remove", "local_color_change", "background",
    )


def test_schema_version_and_keys_are_columns():
    assert schemas.SCHEMA_VERSION >= 1
    for spec in ALL_TABLES.values():
        assert set(spec.key) <= set(spec.schema.names), spec.name


def test_schemas_import_no_torch_and_no_io_libraries():
    code = "import sys, schemas; bad = {'torch', 'duckdb', 'polars', 'dagster'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
