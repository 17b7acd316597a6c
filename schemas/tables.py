"""Row classes and table specs for every table the builder writes and the trainer reads.

`SCHEMA_VERSION` is bumped on any change that alters a column's name, type, nullability or meaning.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from schemas.checks import NON_EMPTY, SHA256_HEX, at_least, one_of
from schemas.edit_types import EDIT_TYPES, IMAGE_REJECT_REASONS, VLM_STAGES
from schemas.table import TableSpec, column

SCHEMA_VERSION = 2  # 2: edit_instructions.target_object


@dataclass(frozen=True)
class VlmProvenance:
    """Columns every VLM-produced row carries."""

    model_id: str = column(NON_EMPTY, doc="model path or hub id that produced the row")
    prompt_version: str = column(NON_EMPTY, doc="hash of the prompt template")
    sampling: str = column(doc="sampling parameters as canonical JSON")
    backend: str = column(NON_EMPTY, doc="transformers | vllm | openai")


@dataclass(frozen=True)
class ImageRow:
    image_id: str = column(SHA256_HEX, doc="sha256 of the original bytes")
    source: str = column(NON_EMPTY, doc="URL or file path the image came from")
    width: int = column(at_least(1), doc="width of the stored (normalised) image")
    height: int = column(at_least(1), doc="height of the stored (normalised) image")
    original_width: int = column(at_least(1))
    original_height: int = column(at_least(1))
    format: str = column(NON_EMPTY, doc="format of the original bytes (JPEG, PNG, ...)")
    shard: str = column(NON_EMPTY, doc="ingest shard the image belongs to")
    image: bytes = column(doc="normalised image bytes (RGB, EXIF-transposed, bounded size)")
    source_caption: str | None = column(doc="caption shipped with the URL list, if any", default=None)


@dataclass(frozen=True)
class ImageRejectRow:
    source: str = column(NON_EMPTY, doc="URL or file path")
    shard: str = column(NON_EMPTY)
    reason: str = column(one_of(IMAGE_REJECT_REASONS))
    detail: str = column(doc="the error message or measured value")
    image_id: str | None = column(SHA256_HEX, doc="set when the bytes were read (e.g. duplicates)", default=None)


@dataclass(frozen=True)
class CaptionRow(VlmProvenance):
    image_id: str = column(SHA256_HEX)
    caption: str = column(NON_EMPTY, doc="reference caption c^y of the source image")


@dataclass(frozen=True)
class EditProposalRow(VlmProvenance):
    proposal_id: str = column(SHA256_HEX, doc="sha256 of (image_id, edit_type, instruction, model, prompt version, sampling)")
    image_id: str = column(SHA256_HEX)
    edit_type: str = column(one_of(EDIT_TYPES))
    instruction: str = column(NON_EMPTY)


@dataclass(frozen=True)
class EditInstructionRow(VlmProvenance):
    proposal_id: str = column(SHA256_HEX)
    image_id: str = column(SHA256_HEX)
    edit_type: str = column(one_of(EDIT_TYPES))
    instruction: str = column(NON_EMPTY)
    is_valid: bool = column()
    reasoning: str = column()
    edited_caption: str | None = column(NON_EMPTY, doc="caption c^x of the edited image; NULL when invalid")
    reference_caption: str | None = column(doc="caption c^y of the source image", default=None)
    target_object: str | None = column(
        NON_EMPTY,
        doc="the object the edit removes, replaces, recolours, retextures or reshapes, as the VLM named it; NULL when "
        "the edit type has none (insertion, style, background) or none was named, and in snapshots of schema 1",
        default=None,
    )


@dataclass(frozen=True)
class ObjectRow(VlmProvenance):
    image_id: str = column(SHA256_HEX)
    is_object_centric: bool = column()
    object_name: str | None = column(NON_EMPTY, doc="NULL when not object-centric")
    reasoning: str = column()


@dataclass(frozen=True)
class BackgroundPromptRow(VlmProvenance):
    image_id: str = column(SHA256_HEX)
    index: int = column(at_least(0))
    object_name: str = column(NON_EMPTY)
    background_caption: str = column(NON_EMPTY, doc="caption placing the object in a new scene")


@dataclass(frozen=True)
class VlmRejectRow(VlmProvenance):
    request_hash: str = column(SHA256_HEX)
    stage: str = column(one_of(VLM_STAGES))
    image_id: str = column(SHA256_HEX)
    raw_text: str = column(doc="what the model produced, kept verbatim")
    error: str = column(NON_EMPTY, doc="why the output was rejected")
    proposal_id: str | None = column(SHA256_HEX, default=None)


@dataclass(frozen=True)
class SnapshotRow:
    snapshot_id: int = column(at_least(0), doc="catalog version (DuckLake snapshot id)")
    created_at: dt.datetime = column()
    parent: int | None = column(at_least(0), doc="previous published snapshot, if any")
    row_counts: dict[str, int] = column(doc="rows per table at this snapshot")
    content_hash: str = column(SHA256_HEX, doc="hash over the data files of every table")
    config: str = column(doc="builder config as canonical JSON")
    schema_version: int = column(at_least(1))
    tag: str | None = column(doc="human name, unique across snapshots", default=None)
    message: str | None = column(default=None)


IMAGES = TableSpec("images", ImageRow, ("image_id",), "accepted source images with normalised bytes")
IMAGES_REJECTED = TableSpec("images_rejected", ImageRejectRow, ("source",), "source images that were not accepted")
CAPTIONS = TableSpec("captions", CaptionRow, ("image_id",), "reference caption of each source image")
EDIT_PROPOSALS = TableSpec("edit_proposals", EditProposalRow, ("proposal_id",), "VLM-proposed edit instructions")
EDIT_INSTRUCTIONS = TableSpec(
    "edit_instructions", EditInstructionRow, ("proposal_id",), "validity judgement and edited caption per proposal"
)
OBJECTS = TableSpec("objects", ObjectRow, ("image_id",), "object-centric judgement per image")
BACKGROUND_PROMPTS = TableSpec(
    "background_prompts", BackgroundPromptRow, ("image_id", "index"), "new-background captions per object"
)
VLM_REJECTS = TableSpec("vlm_rejects", VlmRejectRow, ("request_hash",), "unparseable or out-of-schema VLM output")
SNAPSHOTS = TableSpec("snapshots", SnapshotRow, ("snapshot_id",), "published, immutable corpus versions")

ALL_TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        IMAGES,
        IMAGES_REJECTED,
        CAPTIONS,
        EDIT_PROPOSALS,
        EDIT_INSTRUCTIONS,
        OBJECTS,
        BACKGROUND_PROMPTS,
        VLM_REJECTS,
        SNAPSHOTS,
    )
}
