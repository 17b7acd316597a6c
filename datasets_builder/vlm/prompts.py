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

# Free text is printable Unicode: every code point except C0/C1 control characters, DEL, the quote and the backslash
# (so no JSON escape is ever needed), surrogates, U+2028/U+2029 (line breaks) and U+FFFE/U+FFFF. U+07FF is left out on
# purpose: when a class's ranges run on across U+07FF/U+0800, xgrammar 0.2.8 admits overlong UTF-8 (E0 80..9F ..).
# The length lives inside the pattern, built from repetitions of at most {128} (see docs/ARCHITECTURE.md,
# "Constrained decoding"); minLength/maxLength beside it say the same bounds for readers (xgrammar ignores them).
TEXT_RANGES: tuple[tuple[int, int], ...] = (
    (0x20, 0x21), (0x23, 0x5B), (0x5D, 0x7E), (0xA0, 0x7FE), (0x800, 0x2027), (0x202A, 0xD7FF), (0xE000, 0xFFFD),
    (0x10000, 0x10FFFF),
)
INSTRUCTION_WORDS = re.compile(r"\b(replaced|added|removed|modified|changed|edited|instruction)\b", re.IGNORECASE)
EDITS_PER_IMAGE = 4
BACKGROUNDS_PER_OBJECT = 3
# Edit types that act on an object of the image: the validity stage names it (`target_object`); others have none.
TARGETED_EDIT_TYPES = ("replace", "local_texture", "shape_change", "remove", "local_color_change")

MAX_PATTERN_REPEAT = 128  # xgrammar 0.2.8 fails to compile a regex repetition above {n,128}
BLOCK = 100  # longer strings are whole blocks of BLOCK characters plus a shorter tail
CAPTION_CHARS = 600  # captions, edited captions and background prompts: the paper's are long sentences
REASONING_CHARS = 600


def _code_point(cp: int) -> str:
    # xgrammar reads \uXXXX but not \UXXXXXXXX; a code point above the BMP is written as itself (so is it for re).
    return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)


TEXT_CLASS = "[" + "".join(f"{_code_point(lo)}-{_code_point(hi)}" for lo, hi in TEXT_RANGES) + "]"


def _repeat(atom: str, lo: int, hi: int) -> str:
    """`atom{lo,hi}` with every repetition count at most MAX_PATTERN_REPEAT, matching each length in exactly one way
    (so neither xgrammar's parser nor Python's backtracking `re` meets an explosion of ambiguous splits)."""
    if hi <= MAX_PATTERN_REPEAT:
        return f"{atom}{{{lo},{hi}}}"
    if lo > MAX_PATTERN_REPEAT:
        raise ValueError(f"a string pattern's minimum length is at most {MAX_PATTERN_REPEAT}, not {lo}")
    head = f"{atom}{{{lo}}}" if lo else ""
    if hi - lo <= MAX_PATTERN_REPEAT:
        return head + f"{atom}{{0,{hi - lo}}}"
    blocks, rest = divmod(hi - lo + 1, BLOCK)  # lengths 0..hi-lo: `blocks` whole blocks, then `rest` more lengths

    def whole(count: str) -> str:
        return f"(?:{atom}{{{BLOCK}}}){{{count}}}"

    short = (whole(f"0,{blocks - 1}") if blocks > 1 else "") + f"{atom}{{0,{BLOCK - 1}}}"  # 0 .. blocks*BLOCK-1
    if rest == 0:
        return head + short
    longest = whole(str(blocks)) + (f"{atom}{{0,{rest - 1}}}" if rest > 1 else "")  # blocks*BLOCK .. hi-lo
    return head + f"(?:{short}|{longest})"


def text_pattern(min_len: int, max_len: int) -> dict[str, Any]:
    """A JSON-schema string of printable Unicode with `min_len` to `max_len` characters (code points)."""
    return {"type": "string", "pattern": f"^{_repeat(TEXT_CLASS, min_len, max_len)}$", "minLength": min_len,
            "maxLength": max_len}


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
        """A hard bound: the longest output the schema admits, in UTF-8 bytes (every byte-level token is >= 1 byte),
        plus the stop token."""
        return len(_worst_case(self.schema).encode()) + 1

    def parse(self, text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParseError(f"not JSON: {exc}") from None
        _check(value, self.schema, "$")
        return value


def _worst_case(schema: dict[str, Any]) -> str:
    """The longest output (in UTF-8 bytes) the schema admits, written as the constrained decoder writes it (separators
    ", " and ": ", characters unescaped: the text patterns admit nothing JSON would escape)."""
    kind = schema.get("type")
    if kind == "object":
        return json.dumps({k: json.loads(_worst_case(v)) for k, v in schema["properties"].items()}, ensure_ascii=False)
    if kind == "array":
        return json.dumps([json.loads(_worst_case(schema["items"]))] * schema["maxItems"], ensure_ascii=False)
    if kind == "boolean":
        return "false"
    if "enum" in schema:
        return json.dumps(max(schema["enum"], key=lambda v: len(v.encode())), ensure_ascii=False)
    return json.dumps(_widest_char(schema["pattern"]) * schema["maxLength"], ensure_ascii=False)


def _widest_char(pattern: str) -> str:
    """The highest code point a pattern of listed characters and ranges can match (its UTF-8 form is the longest)."""
    if "[^" in pattern:
        raise ValueError(f"no worst case for a negated character class: {pattern}")
    escaped = [int(h, 16) for h in re.findall(r"\\u([0-9a-fA-F]{4})", pattern)]
    return chr(max([*escaped, *map(ord, pattern)]))


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
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            raise ParseError(f"{where} = {value[:60]!r} has {len(value)} characters, outside "
                             f"{schema.get('minLength', 0)}..{schema.get('maxLength')}")
        if "pattern" in schema and not re.fullmatch(schema["pattern"].strip("^$"), value):
            bad = next((c for c in value if TEXT_CLASS in schema["pattern"] and not re.fullmatch(TEXT_CLASS, c)), None)
            shown = f": character {bad!r} is not printable text" if bad is not None else ""
            raise ParseError(f"{where} = {value[:60]!r} does not match its pattern{shown}")


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": list(properties), "properties": properties}


CAPTION = PromptSpec(
    VlmStage.CAPTION,
    "Describe this image in one plain sentence: the main subjects, where they are and the setting. "
    'Answer as JSON: {{"caption": "..."}}.',
    _object(caption=text_pattern(5, CAPTION_CHARS)),
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
    "Also name the target object: the object of the image that the edit removes, replaces, recolours, retextures or "
    "reshapes, as a short noun phrase with its article (for example: the red car). Leave it empty when the edit "
    "has no such object, as for a style, background or insertion edit.\n"
    'Answer as JSON: {{"is_valid": true|false, "reasoning": "...", "target_object": "...", "edited_caption": "..."}}.',
    _object(
        is_valid={"type": "boolean"},
        reasoning=text_pattern(0, REASONING_CHARS),
        target_object=text_pattern(0, 60),
        edited_caption=text_pattern(0, CAPTION_CHARS),
    ),
)

OBJECT = PromptSpec(
    VlmStage.OBJECT,
    "Is this image object-centric? It is only when a single primary object is clearly recognisable and distinct from "
    "the background, sits near the centre, is entirely visible (not cropped) and the background is not cluttered. "
    "Name the object when it is; otherwise leave the name empty.\n"
    'Answer as JSON: {{"is_object_centric": true|false, "object_name": "...", "reasoning": "..."}}.',
    _object(is_object_centric={"type": "boolean"}, object_name=text_pattern(0, 40),
            reasoning=text_pattern(0, REASONING_CHARS)),
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
            "items": text_pattern(10, CAPTION_CHARS),
        }
    ),
)

PROMPTS: dict[VlmStage, PromptSpec] = {p.stage: p for p in (CAPTION, PROPOSE, VALIDATE, OBJECT, BACKGROUND)}
