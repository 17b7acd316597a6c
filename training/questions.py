"""The critic's Yes/No questions per sample (our wording of the reference reimplementation's templates)."""

from __future__ import annotations

import re
from dataclasses import dataclass

REFERENCE, OUTPUT = "reference", "output"
_TRAILING = r"(?:\s+(?:from|in|out of)\s+(?:the|this)\s+(?:image|picture|photo|scene))?[.!]?\s*$"
_REMOVAL_PHRASINGS = [re.compile(pattern + _TRAILING, re.IGNORECASE) for pattern in (
    r"^\s*(?:please\s+)?(?:remove|delete|erase|eliminate|clear away|clear|take out|take away|get rid of)\s+(?P<x>.+?)",
    r"^\s*(?:please\s+)?take\s+(?P<x>.+?)\s+(?:off|away|out)\b.*?",
    r"^\s*(?:please\s+)?make\s+(?P<x>.+?)\s+(?:disappear|vanish|go away)",
    r"^\s*(?:please\s+)?let\s+(?P<x>.+?)\s+(?:disappear|vanish)",
)]


@dataclass(frozen=True)
class Question:
    """One question to the critic: which images it sees (in order), the text, and the correct answer."""

    images: tuple[str, ...]
    text: str
    correct: str  # "Yes" or "No"
    kind: str  # "edit" or "identity"


def removed_object(instruction: str) -> str | None:
    """The object a removal instruction names ("Take the hat off the man" -> "the hat"), or None when no known
    phrasing matches. For snapshots without a `target_object` column (schema version 1)."""
    for phrasing in _REMOVAL_PHRASINGS:
        match = phrasing.match(instruction)
        if match:
            return match.group("x")
    return None


def removal_target(instruction: str, target_object: str | None) -> tuple[str | None, str]:
    """The object a removal acts on and where it came from: "column", "phrasing", or "none" (not found)."""
    if target_object:
        return target_object, "column"
    found = removed_object(instruction)
    return found, "phrasing" if found else "none"


def presence_question(thing: str, correct: str) -> Question:
    """The question "Does this image contain X?", asked of the output alone, with the answer a made edit gets there."""
    return Question((OUTPUT,), f"Does this image contain {thing}? Answer Yes or No.", correct, "edit")


def questions_for(edit_type: str, instruction: str, target_object: str | None = None) -> list[Question]:
    """Did the edit happen? Is the rest preserved? For `remove`, the first asks of the output alone whether it still
    holds the object (answer No); a removal whose object is unknown gets the general questions instead."""
    target = removal_target(instruction, target_object)[0] if edit_type == "remove" else None
    if target is not None:
        return [
            presence_question(target, "No"),
            Question((REFERENCE, OUTPUT),
                     "The first image is an original photo and the second an edited version of it. Is the second image "
                     f"exactly the same as the first, layout included, if you ignore whether {target} is present? "
                     "Answer Yes or No.", "Yes", "identity"),
        ]
    return [
        Question((REFERENCE, OUTPUT),
                 "The first image is an original photo and the second an edited version of it. Was this editing "
                 f"instruction carried out in the second image: \"{instruction}\"? If the two images look the same, the "
                 "edit failed and the answer is No. Answer Yes or No.", "Yes", "edit"),
        Question((REFERENCE, OUTPUT),
                 "The first image is an original photo and the second an edited version of it. Apart from what this "
                 f"instruction asks for, \"{instruction}\", is the second image the same as the first in every other "
                 "respect? Answer Yes or No.", "Yes", "identity"),
    ]
