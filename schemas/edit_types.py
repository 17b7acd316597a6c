"""The paper's eight edit types, spelled once for every stage."""

from __future__ import annotations

from enum import StrEnum


class EditType(StrEnum):
    """An edit type from NP-Edit's instruction-proposal prompt (paper section 3.3)."""

    INSERTION = "insertion"
    REPLACE = "replace"
    LOCAL_TEXTURE = "local_texture"
    SHAPE_CHANGE = "shape_change"
    STYLE = "style"
    REMOVE = "remove"
    LOCAL_COLOR_CHANGE = "local_color_change"
    BACKGROUND = "background"


EDIT_TYPES: tuple[str, ...] = tuple(t.value for t in EditType)


class ImageRejectReason(StrEnum):
    """Why a source image was not accepted into the `images` table."""

    HTTP_ERROR = "http_error"
    DECODE_ERROR = "decode_error"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"
    DUPLICATE = "duplicate"
    UNSUPPORTED = "unsupported"
    BENCHMARK_OVERLAP = "benchmark_overlap"  # the image is (a copy of) an evaluation benchmark's image


IMAGE_REJECT_REASONS: tuple[str, ...] = tuple(r.value for r in ImageRejectReason)


class VlmStage(StrEnum):
    """A VLM-driven stage of the corpus builder; names the stage of a `vlm_rejects` row."""

    CAPTION = "caption"
    PROPOSE = "propose"
    VALIDATE = "validate"
    OBJECT = "object"
    BACKGROUND = "background"


VLM_STAGES: tuple[str, ...] = tuple(s.value for s in VlmStage)
