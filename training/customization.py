"""Subject customization, NP-Edit's second task: put the object of a reference image into a new scene.

A sample is an object-centric corpus image (`objects.is_object_centric`), the object's name and one of its
`background_prompts` captions. The generator reads an instruction made from the two; the DMD teacher reads the scene
caption itself (it already describes the object in the new scene); the critic asks the questions below. Every
wording here is our own and lives only here.
"""

from __future__ import annotations

import hashlib

from training.questions import OUTPUT, REFERENCE, Question

CUSTOMIZATION = "customization"  # the task's name where an edit type would stand (batches, mixes, logs)
INSTRUCTION_TEMPLATES = (
    "Show {object} from this image in a new scene: {scene}",
    "Keep {object} exactly as it is and place it here: {scene}",
    "Put {object} from the picture into this setting: {scene}",
)


def customization_instruction(object_name: str, scene: str, variant: int = 0) -> str:
    """The generator's instruction for placing `object_name` in `scene` (`variant` picks a phrasing)."""
    template = INSTRUCTION_TEMPLATES[variant % len(INSTRUCTION_TEMPLATES)]
    return template.format(object=object_name.strip(), scene=scene.strip().rstrip("."))


def phrasing_for(key: str) -> int:
    """A fixed phrasing per sample (its key hashed), so a corpus row always reads the same way."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(INSTRUCTION_TEMPLATES)


def customization_questions(object_name: str, scene: str) -> list[Question]:
    """The critic's questions about a customization output, with why each exists."""
    return [
        # The task's point: the output must show the reference's own object, not just any object of its class.
        Question((REFERENCE, OUTPUT),
                 f"The first image shows {object_name}. Does the second image show the very same object, with the "
                 "same shape, colours, patterns and details? Answer Yes or No.", "Yes", "identity"),
        # The other half: the object must stand in the scene asked for, not in the reference's surroundings.
        Question((OUTPUT,), f"Does this image show {object_name} in this scene: {scene.strip().rstrip('.')}? "
                            "Answer Yes or No.", "Yes", "edit"),
        # The known collapse: returning the reference unchanged passes the identity question perfectly. Asked of the
        # pair, with No as the correct answer, it costs the generator whenever the scene and view stay the same.
        Question((REFERENCE, OUTPUT),
                 "Is the second image a copy of the first, with the same background, framing and viewpoint? "
                 "Answer Yes or No.", "No", "copy"),
    ]
