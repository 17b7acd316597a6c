"""The judge's prompts: npedit's own, written in our own words, so every score they give is labelled `ours`.

No maintained package ships the official judge prompts in a form this project can depend on (checked for issue 12:
lmms-eval 0.7.3 carries both GEdit's VIEScore and ImgEdit's texts but requires torchvision, wandb==0.25.0, opencv,
yt-dlp and more; evalscope 1.14.1 carries only GEdit's, behind an import of its whole framework and modelscope's
datasets stack; editscore 0.2 carries a variant of its own and requires torchvision; there is no `viescore` on
PyPI). Scores from these prompts are therefore never comparable with published tables, and the report says so.

Each prompt asks for a short reasoning first, then integer scores, and the answer is constrained to a JSON schema
(an integer enum per score, so every backend's structured output can hold it). The scores map onto the benchmarks'
protocols: GEdit's SC pair (success, over-editing) and PQ pair (naturalness, artifacts) on 0-10; ImgEdit's three
sub-scores on 1-5. A prompt that shows two images gets them as one side-by-side picture (see `evaluation.judge`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from datasets_builder.vlm.prompts import ParseError, text_pattern

REASONING_CHARS = 400
SIDE_BY_SIDE = ("The picture shows two images side by side, separated by a grey bar: on the left the original "
                "image, on the right the result of editing it.")


@dataclass(frozen=True)
class JudgePrompt:
    """One judge question: a template filled with the case's fields, integer scores in `score_range`.

    Duck-types the builder's `PromptSpec` for `VlmRunner` (version, render, schema, max_new_tokens, parse).
    """

    name: str
    template: str
    scores: tuple[str, ...]
    score_range: tuple[int, int]
    two_images: bool  # the image is the original and the edit side by side; else the edit alone

    @property
    def schema(self) -> dict[str, Any]:
        low, high = self.score_range
        properties: dict[str, Any] = {"reasoning": text_pattern(0, REASONING_CHARS)}
        properties |= {score: {"type": "integer", "enum": list(range(low, high + 1))} for score in self.scores}
        return {"type": "object", "additionalProperties": False, "required": list(properties),
                "properties": properties}

    @property
    def version(self) -> str:
        blob = json.dumps([self.template, self.schema, self.two_images], sort_keys=True).encode()
        return f"judge-{self.name}-{hashlib.sha256(blob).hexdigest()[:12]}"

    def render(self, **fields: Any) -> str:
        return self.template.format(**fields)

    @property
    def max_new_tokens(self) -> int:
        """The longest answer the schema admits in UTF-8 bytes (4 per reasoning character), plus the stop token."""
        widest = {"reasoning": "\U0010ffff" * REASONING_CHARS} | {s: self.score_range[1] for s in self.scores}
        return len(json.dumps(widest, ensure_ascii=False).encode()) + 1

    def parse(self, text: str) -> dict[str, Any]:
        """The answer's scores (and reasoning); anything else in or missing from it is a `ParseError`."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ParseError(f"not JSON: {error}") from None
        if not isinstance(value, dict):
            raise ParseError("the answer is not a JSON object")
        expected = {"reasoning", *self.scores}
        if missing := sorted(expected - set(value)):
            raise ParseError(f"the answer lacks {', '.join(missing)}")
        if extra := sorted(set(value) - expected):
            raise ParseError(f"the answer has unexpected {', '.join(extra)}")
        if not isinstance(value["reasoning"], str):
            raise ParseError("reasoning is not a string")
        low, high = self.score_range
        for score in self.scores:
            number = value[score]
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                raise ParseError(f"{score} = {number!r} is not an integer from {low} to {high}")
        return value


@dataclass(frozen=True)
class JudgePromptSet:
    """The prompts of one benchmark's judge; `official` only for the benchmark authors' own texts."""

    name: str
    official: bool
    prompts: tuple[JudgePrompt, ...]


def _answer(*scores: str) -> str:
    """The answer's format, braces doubled for the template's `format`."""
    fields = ", ".join(['"reasoning": "..."', *(f'"{score}": <integer>' for score in scores)])
    return f"Answer as JSON with a short reasoning first, then the scores: {{{{{fields}}}}}."


GEDIT_SEMANTICS = JudgePrompt(
    "gedit-semantics",
    f"{SIDE_BY_SIDE}\nThe edit was asked for with this instruction: \"{{instruction}}\"\n"
    "Rate two things from 0 to 10. success: how completely the right image carries out the instruction (0: nothing "
    "the instruction asks for happened; 10: everything it asks for happened, exactly as described). over_editing: "
    "how well the right image keeps what the instruction did not mention (0: it is a different picture; 10: only the "
    "requested change was made and everything else is as in the left image). If the two images look the same, the "
    "edit failed: success is low.\n" + _answer("success", "over_editing"),
    ("success", "over_editing"), (0, 10), two_images=True,
)

GEDIT_QUALITY = JudgePrompt(
    "gedit-quality",
    "Look at this image as a photo editor would, without regard to what it was meant to show.\n"
    "Rate two things from 0 to 10. naturalness: how believable the image is (0: clearly synthetic or broken, with "
    "impossible lighting, perspective or proportions; 10: indistinguishable from a real photo or a deliberate "
    "artwork). artifacts: how free the image is of defects (0: heavy blur, noise, smears, seams, distorted faces, "
    "hands or text; 10: no visible defect anywhere).\n" + _answer("naturalness", "artifacts"),
    ("naturalness", "artifacts"), (0, 10), two_images=False,
)

IMGEDIT_SCORES = ("instruction_following", "visual_quality", "integrity")

IMGEDIT_EDIT = JudgePrompt(
    "imgedit-edit",
    f"{SIDE_BY_SIDE}\nThe edit is of the kind \"{{edit_type}}\" and was asked for with this instruction: "
    "\"{instruction}\"\n"
    "Rate three things from 1 to 5. instruction_following: does the right image do what the instruction asks, to "
    "the right object, in the right amount and place (1: not at all or to the wrong thing; 3: mostly, with clear "
    "mistakes; 5: exactly). visual_quality: does the edited region blend with the rest (1: broken, deformed or smeared; 3: "
    "noticeable seams, blur or colour mismatch; 5: the edit cannot be told apart from the photo). integrity: is "
    "the scene still physically coherent and is everything the instruction did not mention preserved (1: floating "
    "or interpenetrating objects, wrong shadows, or the original content ruined; 3: small inconsistencies or losses; "
    "5: coherent and fully preserved).\n" + _answer(*IMGEDIT_SCORES),
    IMGEDIT_SCORES, (1, 5), two_images=True,
)

OURS: dict[str, JudgePromptSet] = {
    "gedit": JudgePromptSet("ours-v1", False, (GEDIT_SEMANTICS, GEDIT_QUALITY)),
    "imgedit": JudgePromptSet("ours-v1", False, (IMGEDIT_EDIT,)),
}
