"""Versioned prompts for every VLM stage: a template, a JSON schema the output is constrained to, and a parser.

Prompts are written in our own words from the paper's rules (NP-Edit section 3.3 and appendix). The version of a
prompt is a hash of its template and schema, recorded in every row it produces.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from schemas import EDIT_TYPES, VlmStage

# ASCII whitelist with the length inside the pattern: xgrammar drops maxLength when a pattern is present and its
# maxLength-only rule admits control characters (see docs/ARCHITECTURE.md, "Constrained decoding").
TEXT_CHARS = "A-Za-z0-9 ,.;:'()!?&/-"
INSTRUCTION_WORDS = re.compile(r"\b(replaced|added|removed|modified|changed|edited|instruction)\b", re.IGNORECASE)
EDITS_PER_IMAGE = 4
BACKGROUNDS_PER_OBJECT = 3


MAX_PATTERN_REPEAT = 128  # xgrammar 0.2.8 fails to compile a regex repetition above {n,128}


def text_pattern(min_len: int, max_len: int) -> dict[str, str]:
    if max_len > MAX_PATTERN_REPEAT:
        raise ValueError(f"string patterns are capped at {MAX_PATTERN_REPEAT} characters, not {max_len}")
    return {"type": "string", "pattern": f"^[{TEXT_CHARS}]{{{min_len},{max_len}}}$"}


class ParseError(ValueError):
    """The model's output is not usable; the message becomes the reject row's `error`."""


@dataclass(frozen=True)
class PromptSpec:
    """One stage's prompt: `render(**fields)` gives the user text shown next to the image."""

    stage: VlmStage
    template: str
    schema: dict[str, Any] = field(hash=False)

    @property
    def version(self) -> str:
        blob = json.dumps([self.template, self.schema], sort_keys=True).encode()
        return f"{self.stage.value}-{hashlib.sha256(blob).hexdigest()[:12]}"

    def render(self, **fields: Any) -> str:
        return self.template.format(**fields)

    @property
    def max_new_tokens(self) -> int:
        """A hard bound: the longest output the schema admits, in bytes (every byte-level token is >= 1 byte)."""
        return len(_worst_case(self.schema)) + 1

    def parse(self, text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParseError(f"not JSON: {exc}") from None
        _check(value, self.schema, "$")
        return value


def _worst_case(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if kind == "object":
        return json.dumps({k: json.loads(_worst_case(v)) for k, v in schema["properties"].items()})
    if kind == "array":
        return json.dumps([json.loads(_worst_case(schema["items"]))] * schema["maxItems"])
    if kind == "boolean":
        return "false"
    if "enum" in schema:
        return json.dumps(max(schema["enum"], key=len))
    max_len = int(re.search(r"\{\d+,(\d+)\}", schema["pattern"]).group(1))
    return json.dumps("x" * max_len)


def _check(value: Any, schema: dict[str, Any], where: str) -> None:
    """A small JSON-schema check for the subset our prompts use; the first violation is the error."""
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise ParseError(f"{where} is not an object")
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            raise ParseError(f"{where} lacks {missing[0]!r}")
        extra = [k for k in value if k not in schema["properties"]]
        if extra:
            raise ParseError(f"{where} has unexpected key {extra[0]!r}")
        for key, sub in schema["properties"].items():
            _check(value[key], sub, f"{where}.{key}")
    elif kind == "array":
        if not isinstance(value, list):
            raise ParseError(f"{where} is not an array")
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            raise ParseError(f"{where} has {len(value)} items")
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise ParseError(f"{where} is not a boolean")
    elif kind == "string":
        if not isinstance(value, str):
            raise ParseError(f"{where} is not a string")
        if "enum" in schema and value not in schema["enum"]:
            raise ParseError(f"{where} = {value!r} is not one of {', '.join(schema['enum'])}")
        if "pattern" in schema and not re.fullmatch(schema["pattern"].strip("^$"), value):
            raise ParseError(f"{where} = {value[:60]!r} does not match {schema['pattern']}")


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": list(properties), "properties": properties}


CAPTION = PromptSpec(
    VlmStage.CAPTION,
    "Describe this image in one plain sentence: the main subjects, where they are and the setting. "
    'Answer as JSON: {{"caption": "..."}}.',
    _object(caption=text_pattern(5, 128)),
)

PROPOSE = PromptSpec(
    VlmStage.PROPOSE,
    "You write image editing instructions. Look at the image and propose {count} instructions, each of a different "
    "edit type from: insertion, replace, local_texture, shape_change, style, remove, local_color_change, background.\n"
    "Rules: every instruction must make sense for this image and refer to what is really in it; an insertion names "
    "exactly where the new object goes (on the table, in the sky), never vague places such as near or around; never "
    "propose a change to a tiny detail; vary the scenarios (futuristic, historical, magical, surreal, natural) and do "
    "not reuse phrasings; keep each instruction short and imperative.\n"
    'Answer as JSON: {{"edits": [{{"edit_type": "...", "instruction": "..."}}, ...]}}.',
    _object(
        edits={
            "type": "array",
            "minItems": EDITS_PER_IMAGE,
            "maxItems": EDITS_PER_IMAGE,
            "items": _object(edit_type={"type": "string", "enum": list(EDIT_TYPES)}, instruction=text_pattern(5, 100)),
        }
    ),
)

VALIDATE = PromptSpec(
    VlmStage.VALIDATE,
    "An edit instruction of type {edit_type} was proposed for this image: \"{instruction}\".\n"
    "Judge it. It is invalid when it modifies, removes or replaces something that is not in the image, when it is too "
    "hard to carry out, or when it would not visibly change the image. For a valid instruction, write the caption of "
    "the image after the edit: describe the result, not the change (never use words such as replaced, added, removed "
    "or modified); for a removal, do not mention the removed object; keep it general enough to fit any faithful "
    "result. For an invalid instruction the caption is empty.\n"
    'Answer as JSON: {{"is_valid": true|false, "reasoning": "...", "edited_caption": "..."}}.',
    _object(is_valid={"type": "boolean"}, reasoning=text_pattern(0, 128), edited_caption=text_pattern(0, 128)),
)

OBJECT = PromptSpec(
    VlmStage.OBJECT,
    "Is this image object-centric? It is only when a single primary object is clearly recognisable and distinct from "
    "the background, sits near the centre, is entirely visible (not cropped) and the background is not cluttered. "
    "Name the object when it is; otherwise leave the name empty.\n"
    'Answer as JSON: {{"is_object_centric": true|false, "object_name": "...", "reasoning": "..."}}.',
    _object(is_object_centric={"type": "boolean"}, object_name=text_pattern(0, 40), reasoning=text_pattern(0, 128)),
)

BACKGROUND = PromptSpec(
    VlmStage.BACKGROUND,
    "The object in this image is: {object_name}. Write {count} captions that place this same object in new, varied "
    "and realistic scenes, each naming the object and describing its new surroundings in detail.\n"
    'Answer as JSON: {{"background_captions": ["...", ...]}}.',
    _object(
        background_captions={
            "type": "array",
            "minItems": BACKGROUNDS_PER_OBJECT,
            "maxItems": BACKGROUNDS_PER_OBJECT,
            "items": text_pattern(10, 128),
        }
    ),
)

PROMPTS: dict[VlmStage, PromptSpec] = {p.stage: p for p in (CAPTION, PROPOSE, VALIDATE, OBJECT, BACKGROUND)}
