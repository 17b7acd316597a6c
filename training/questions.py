"""The critic's Yes/No questions per sample (our wording of the reference reimplementation's templates)."""

from __future__ import annotations

import re
from dataclasses import dataclass

REFERENCE, OUTPUT = "reference", "output"
_REMOVE_VERBS = re.compile(r"^\s*(?:please\s+)?(?:remove|delete|erase|take out|take away|get rid of)\s+(.+?)[.!]?\s*$",
                           re.IGNORECASE)


@dataclass(frozen=True)
class Question:
    """One question to the critic: which images it sees (in order), the text, and the correct answer."""

    images: tuple[str, ...]
    text: str
    correct: str  # "Yes" or "No"
    kind: str  # "edit" or "identity"


def removed_object(instruction: str) -> str:
    """The object a removal instruction names ("Remove the red car on the left" -> "the red car on the left")."""
    match = _REMOVE_VERBS.match(instruction)
    return match.group(1) if match else instruction


def questions_for(edit_type: str, instruction: str) -> list[Question]:
    """Did the edit happen? Is the rest preserved? For `remove`, the first asks of the output alone (answer No)."""
    if edit_type == "remove":
        target = removed_object(instruction)
        return [
            Question((OUTPUT,), f"Does this image contain {target}? Answer Yes or No.", "No", "edit"),
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
