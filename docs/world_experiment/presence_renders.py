"""Findings section 42's render check: can the committed critic answer "Does this image contain X?" about the object an
edit leaves, not only about one a removal takes away? On 96 held-out edits per object edit type, rendered cleanly, it
is asked of the source and of the target whether each holds the edited object as it was and as the edit leaves it
("the red circle", "the red square"; for local texture "the striped red circle", a name the trainer never uses), and
the trainer's before-and-after edit question is asked of (source, target) and (source, source). It prints the share
answered right per question (about 1 CPU-minute).

    .venv/bin/python docs/world_experiment/presence_renders.py [--models world/pretrained] [--per-type 96]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from training.critics import load_critic
from training.questions import presence_question, questions_for
from world import PRETRAINED
from world.critic import evaluate_critic
from world.evaluate import held_out_edits
from world.questions import LabelledQuestion
from world.scene import render

EDIT_TYPES = ("remove", "local_color_change", "replace", "shape_change", "local_texture")


def contains(kind: str, image: np.ndarray, name: str, answer: str, edit) -> LabelledQuestion:
    return LabelledQuestion(kind, (image,), presence_question(name, answer).text, answer, edit)


def render_questions(per_type: int) -> list[LabelledQuestion]:
    """Every check's questions, their kind `<edit type>/<check>`."""
    asked = []
    for edit in held_out_edits(per_type, edit_types=EDIT_TYPES):
        source, target = (np.asarray(render(s), np.float32) for s in (edit.source, edit.target))
        before, after = edit.source.object_at(edit.cell), edit.target.object_at(edit.cell)
        kind = edit.edit_type
        asked.append(contains(f"{kind}/as it was, in the source (Yes)", source, before.name, "Yes", edit))
        if kind == "local_texture":  # the name holds no texture: ask with the texture in it
            textured = f"the {after.texture} {after.colour} {after.shape}"
            asked.append(contains(f"{kind}/textured as left, in the target (Yes)", target, textured, "Yes", edit))
            asked.append(contains(f"{kind}/textured as left, in the source (No)", source, textured, "No", edit))
            continue
        asked.append(contains(f"{kind}/as it was, in the target (No)", target, before.name, "No", edit))
        if after is not None:
            asked.append(contains(f"{kind}/as left, in the target (Yes)", target, after.name, "Yes", edit))
            asked.append(contains(f"{kind}/as left, in the source (No)", source, after.name, "No", edit))
            edit_question = next(q for q in questions_for(kind, edit.instruction, edit.target_object)
                                 if q.kind == "edit")
            asked.append(LabelledQuestion(f"{kind}/trainer's edit question, target (Yes)", (source, target),
                                          edit_question.text, "Yes", edit))
            asked.append(LabelledQuestion(f"{kind}/trainer's edit question, unchanged (No)", (source, source),
                                          edit_question.text, "No", edit))
    return asked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=PRETRAINED, help="holds critic/")
    parser.add_argument("--per-type", type=int, default=96)
    args = parser.parse_args()
    critic = load_critic(args.models / "critic")
    per_kind = evaluate_critic(critic, render_questions(args.per_type))["per_kind"]
    print(f"{args.models / 'critic'}: share answered right, {args.per_type} held-out renders per edit type")
    for kind, right in per_kind.items():
        print(f"  {kind:60s} {right:6.1%}")


if __name__ == "__main__":
    main()
