"""A lake published under schema 1 (no edit_instructions.target_object) keeps working after the upgrade to schema 2."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from datasets_builder import lake
from schemas import ALL_TABLES, EDIT_INSTRUCTIONS, IMAGES_REJECTED, TableSpec, VlmProvenance
from schemas.checks import NON_EMPTY, SHA256_HEX, one_of
from schemas.edit_types import EDIT_TYPES
from schemas.table import column

PROV = {"model_id": "tiny/qwen2_5_vl", "sampling": "{}", "backend": "transformers"}


@dataclass(frozen=True)
class EditInstructionRowV1(VlmProvenance):
    """edit_instructions as schema 1 wrote it."""

    proposal_id: str = column(SHA256_HEX)
    image_id: str = column(SHA256_HEX)
    edit_type: str = column(one_of(EDIT_TYPES))
    instruction: str = column(NON_EMPTY)
    is_valid: bool = column()
    reasoning: str = column()
    edited_caption: str | None = column(NON_EMPTY)
    reference_caption: str | None = column(default=None)


EDIT_INSTRUCTIONS_V1 = TableSpec("edit_instructions", EditInstructionRowV1, ("proposal_id",), "schema 1")


def _edits(prompt: str, **extra):
    return [dict(**PROV, prompt_version=prompt, proposal_id=f"{i}" * 64, image_id="a" * 64, edit_type="remove",
                 instruction=f"Remove the cup {i}", is_valid=True, reasoning="visible",
                 edited_caption="an empty saucer", **extra) for i in range(3)]


def _rejects(tag: str):
    return IMAGES_REJECTED.to_arrow([dict(source=f"http://x/{tag}.jpg", shard=tag, reason="http_error", detail="404")])


@pytest.mark.parametrize("kind", ["duckdb", "sqlite", "postgres"])
def test_a_schema_1_lake_takes_a_schema_2_build(tmp_path, monkeypatch, kind, request):
    store = {"duckdb": lambda: lake.LakeConfig.local(tmp_path / "lake"),
             "sqlite": lambda: lake.LakeConfig(f"sqlite:{tmp_path / 'catalog.sqlite'}", str(tmp_path / "data")),
             "postgres": lambda: lake.LakeConfig(f"postgres:{request.getfixturevalue('postgres_dsn')}",
                                                 str(tmp_path / "data"))}[kind]()
    with monkeypatch.context() as old:  # the builder as it was at schema 1
        old.setattr(lake, "ALL_TABLES", {**ALL_TABLES, "edit_instructions": EDIT_INSTRUCTIONS_V1})
        old.setattr(lake, "SCHEMA_VERSION", 1)
        v1_file = lake.write_staged(store, EDIT_INSTRUCTIONS_V1, EDIT_INSTRUCTIONS_V1.to_arrow(_edits("validate-1")),
                                    "edits-prompt1")
        v1 = lake.publish(store, {"edit_instructions": [v1_file]}, message="schema 1", tag="v1")
    v1_rows = lake.read_table(store, "edit_instructions", "v1").to_pylist()
    assert "target_object" not in v1_rows[0] and v1.schema_version == 1

    # An upgraded builder publishing another table adds the column: schema-1 rows read it as NULL.
    other = lake.write_staged(store, IMAGES_REJECTED, _rejects("b"), "b")
    v1b = lake.publish(store, {"images_rejected": [other]}, message="more rejects", tag="v1b")
    assert v1b.schema_version == 2
    assert lake.read_table(store, "edit_instructions", "v1b").column("target_object").to_pylist() == [None] * 3
    assert lake.read_table(store, "edit_instructions", "v1").to_pylist() == v1_rows  # still without the column
    assert "target_object" not in lake.table_columns(store, "edit_instructions", "v1")
    assert lake.table_columns(store, "edit_instructions", "v1b")[-1] == "target_object"

    # A schema-2 build (new prompt, so new files) is refused beside schema-1 rows, and replaces them when asked.
    v2_file = lake.write_staged(store, EDIT_INSTRUCTIONS,
                                EDIT_INSTRUCTIONS.to_arrow(_edits("validate-2", target_object="the cup")), "edits-prompt2")
    with pytest.raises(ValueError, match="edit_instructions already holds 1 file.*edits-prompt1.parquet"):
        lake.publish(store, {"edit_instructions": [v2_file]}, message="schema 2")
    v2 = lake.publish(store, {"edit_instructions": [v2_file]}, message="schema 2", tag="v2", replace=True)
    latest = lake.read_table(store, "edit_instructions")
    assert latest.column("target_object").to_pylist() == ["the cup"] * 3
    assert latest.column_names == EDIT_INSTRUCTIONS.schema.names  # the added column is last, as in the row class
    assert EDIT_INSTRUCTIONS.validate(latest).num_rows == 3
    assert lake.read_table(store, "edit_instructions", "v1").to_pylist() == v1_rows
    assert lake.published_snapshots(store).column("schema_version").to_pylist() == [1, 2, 2]
    assert all(lake.verify_content_hash(store, tag) for tag in ("v1", "v1b", "v2"))
    assert v2.row_counts["edit_instructions"] == 3 and v2.row_counts["images_rejected"] == 1

    # Back to the schema-1 files (say, the earlier prompt again): they register, target_object NULL.
    back = lake.publish(store, {"edit_instructions": [v1_file]}, message="schema-1 files again", tag="v3",
                        replace=True)
    assert lake.read_table(store, "edit_instructions", "v3").column("target_object").to_pylist() == [None] * 3
    assert back.row_counts["edit_instructions"] == 3 and lake.verify_content_hash(store, "v3")
