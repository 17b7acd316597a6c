"""Can the critic teach the colour word? `npedit world probe-critic --colour-word`: each held-out local colour edit
with an interior, asked for every colour it may ask (as `world.instruction_probe` asks editors), and the critic's
P(Yes) to the trainer's edit question about the scene drawn every way an editor could answer: the named object in the
asked colour, in another colour, another object in the asked colour, nothing changed. A critic that reads the word
says Yes to the first alone and ranks the asked colour above the object's other colours; its identity question (is
the rest kept?) says Yes to the right edit and No to another object repainted."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from schemas.errors import Refused
from training.questions import questions_for
from world.edits import WorldEdit
from world.instruction_probe import PHRASING, _interior, _named_object, asks
from world.scene import with_objects
from world.vae import reconstruct, renders


@dataclass(frozen=True)
class CriticColourReading:
    asked: float  # mean P(Yes): the named object painted the asked colour (the right edit)
    other_colour: float  # the named object painted another free colour
    other_object: float  # another object of the scene painted the asked colour, the named one kept
    unchanged: float  # the source returned as it is
    ranked_first: float  # share of asks whose right edit has the highest P(Yes) among the object's colours
    chance: float  # what ranking at random would give (the mean of 1 / the colours an edit may ask)
    n: int  # asks measured (edits x asked colours)
    identity_asked: float = float("nan")  # P(Yes) to the identity question ("the rest kept?") about the right edit
    identity_other_object: float = float("nan")  # the same about another object painted the asked colour


def critic_reads_colour(critic, edits: list[WorldEdit], *, phrasing: str = PHRASING,
                        vae=None) -> CriticColourReading:
    """The critic's P(Yes) per kind of answer, each image rendered (or, with `vae`, passed through its round trip, as
    an editor's outputs are decoded); edits whose object is too small to have an interior are skipped."""
    was_training = critic.model.training
    critic.model.eval()
    asked, other_colour, other_object, unchanged, ranked, chance = [], [], [], [], [], []
    identity_asked, identity_other = [], []
    for edit in edits:
        if edit.edit_type != "local_color_change" or not _interior(edit).any():
            continue
        obj = _named_object(edit)
        others = [o for o in edit.source.objects if o is not obj]
        pairs = asks(edit, phrasing)
        colours = [colour for colour, _ in pairs]
        recoloured = [with_objects(edit.source, others + [replace(obj, colour=c)]) for c in colours]
        shown = list(_look(recoloured + [edit.source], vae))
        source = renders([edit.source])[0]  # the reference the editor is given, never decoded
        chance.append(1 / len(colours))
        for i, (colour, instruction) in enumerate(pairs):
            movable = [o for o in others if o.colour != colour]
            moved = _look([with_objects(edit.source, [o for o in edit.source.objects if o is not movable[0]]
                                        + [replace(movable[0], colour=colour)])], vae) if movable else []
            p = _p_yes(critic, source, shown + list(moved), instruction)
            kept = _p_yes(critic, source, [shown[i]] + list(moved), instruction, kind="identity")
            identity_asked.append(kept[0])
            identity_other.extend(kept[1:])
            asked.append(p[i])
            other_colour.extend(np.delete(p[:len(colours)], i))
            unchanged.append(p[len(colours)])
            other_object.extend(p[len(colours) + 1:])
            ranked.append(float(np.argmax(p[:len(colours)]) == i))
    critic.model.train(was_training)
    if not asked:
        raise Refused("no local colour edit with an object large enough to measure")
    return CriticColourReading(float(np.mean(asked)), float(np.mean(other_colour)),
                               float(np.mean(other_object)) if other_object else float("nan"),
                               float(np.mean(unchanged)), float(np.mean(ranked)), float(np.mean(chance)), len(asked),
                               float(np.mean(identity_asked)),
                               float(np.mean(identity_other)) if identity_other else float("nan"))


def _look(scenes: list, vae) -> torch.Tensor:
    """The scenes' renders in [-1, 1], through `vae`'s round trip when given (as an editor's outputs are decoded)."""
    images = renders(scenes)
    return images if vae is None else reconstruct(vae, images)


def _p_yes(critic, source: torch.Tensor, outputs: list[torch.Tensor], instruction: str,
           kind: str = "edit") -> np.ndarray:
    """P(Yes) to the trainer's question of `kind` (edit or identity) about each output beside the source."""
    question = next(q for q in questions_for("local_color_change", instruction) if q.kind == kind)
    with torch.no_grad():
        logit_yes, logit_no = critic.answer_logits([[source, output] for output in outputs],
                                                   [question.text] * len(outputs))
    return torch.sigmoid(logit_yes - logit_no).numpy()
