"""Critic questions on what editors really draw: editors' outputs on fresh world edits, each of the trainer's questions
about them answered by the classical verifier.

A critic trained only on renders has never seen an editor's soft, half-made edits. These questions show it such
images with the answer the world knows, so `npedit world build --models critic_outputs` can continue the critic on
them, and `evaluate_on_outputs` (`npedit world probe-critic`) can say how often a critic is wrong about a given
editor's outputs (findings, section 9).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from schemas.edit_types import EDIT_TYPES
from training.backbones import ZImageBackbone
from training.questions import OUTPUT, REFERENCE, Question, questions_for
from training.critics.qwen import QwenVLCritic
from world.critic import fit_critic, save_with_manifest, yes_no_loss
from world.edits import WorldEdit, random_edit
from world.evaluate import run_editor
from world.questions import ALL_KINDS, LabelledQuestion
from world.scene import render
from world.score import EditScore, score_edit
from world.vae import invocation
from world.verify import ParsedScene, as_array, parse_image

OUTPUTS_SEED = 40_000_001  # the edits editors draw for the critic to learn from
HELD_OUT_OUTPUTS_SEED = 40_000_002  # the edits they draw to measure it on


def verifier_answer(edit: WorldEdit, question: Question, parsed: ParsedScene, score: EditScore) -> str:
    """The true answer to one of the trainer's questions about an output, from its classical parse and scores.

    The edit question holds when what the instruction names holds in the parse, realism aside (it asks whether the
    instruction was carried out; a clean image is DMD's business); "does it contain X?" when an object of X's shape
    and colour is still there; the identity question when the output is a clean scene (a smear or fragment is a
    change nobody asked for) whose untouched objects, and whatever else the edit type leaves alone, parse unchanged."""
    if question.images == (OUTPUT,):
        gone = edit.source.object_at(edit.cell)
        return "Yes" if parsed.find(gone.shape, gone.colour) is not None else "No"
    if question.kind == "edit":
        return "Yes" if score.applied else "No"
    source = edit.source
    kept = {"style": (parsed.background, parsed.pattern) == (source.background, source.pattern),
            "background": parsed.style == source.style}.get(
        edit.edit_type, (parsed.style, parsed.background, parsed.pattern) == (source.style, source.background,
                                                                                source.pattern))
    return "Yes" if score.realism and score.untouched_objects_kept and kept else "No"


def output_questions(edit: WorldEdit, output: np.ndarray) -> list[LabelledQuestion]:
    """The trainer's questions about one output of `edit`, each with the verifier's answer."""
    shown = {REFERENCE: np.asarray(render(edit.source), np.uint8), OUTPUT: output.astype(np.uint8)}
    parsed = parse_image(output)
    score = score_edit(edit, output, parsed)
    return [LabelledQuestion(f"{edit.edit_type}/{q.kind}", tuple(shown[role] for role in q.images), q.text,
                             verifier_answer(edit, q, parsed, score), edit,
                             tuple(edit.source if role == REFERENCE else None for role in q.images))
            for q in questions_for(edit.edit_type, edit.instruction, edit.target_object)]


def check_editors(editors: list[Path]) -> None:
    """A `ValueError` naming every path that is not an editor checkpoint (a diffusers folder with model_index.json)."""
    missing = [str(e) for e in editors if not (Path(e) / "model_index.json").exists()]
    if missing:
        raise ValueError(f"not an editor checkpoint (no model_index.json): {', '.join(missing)}")


def editor_questions(editors: list[Path], per_type: int, *, seed: int = OUTPUTS_SEED,
                     edit_types: tuple[str, ...] = EDIT_TYPES, num_steps: int = 4,
                     edits: list[WorldEdit] | None = None) -> list[LabelledQuestion]:
    """Every editor's outputs on `per_type` fresh edits of each type (the same edits for every editor, a stream of
    its own), or on `edits` when given (e.g. the editors' own training edits), turned into questions answered by the
    verifier."""
    rng = random.Random(seed)
    if edits is None:
        edits = [random_edit(rng, edit_type) for edit_type in edit_types for _ in range(per_type)]
    questions = []
    for index, path in enumerate(editors):
        editor = ZImageBackbone.from_pretrained(path)
        with torch.no_grad():
            outputs = run_editor(editor, edits, num_steps=num_steps, seed=seed + index)
        for edit, output in zip(edits, outputs):
            questions += output_questions(edit, as_array(output).round().clip(0, 255))
    return questions


def balanced_accuracy(correct: list[tuple[LabelledQuestion, bool]]) -> dict:
    """Per question kind, the mean of the accuracy on Yes questions and on No questions (one answer alone when the
    kind has only one), so a critic that always says No does not look right; with the mean, weakest kind, the share
    of Yes answers per kind and the share of No questions answered Yes ("false_yes": how often an output that fails
    the question passes it, what an editor exploiting the critic raises)."""
    by_kind: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for question, right in correct:
        by_kind[question.kind][question.answer].append(right)
    per_kind = {kind: float(np.mean([np.mean(v) for v in answers.values()])) for kind, answers in by_kind.items()}
    yes_share = {kind: len(answers.get("Yes", [])) / sum(map(len, answers.values()))
                 for kind, answers in by_kind.items()}
    false_yes = {kind: 1 - float(np.mean(answers["No"])) for kind, answers in by_kind.items() if answers.get("No")}
    return {"accuracy": float(np.mean(list(per_kind.values()))), "weakest": min(per_kind.values()),
            "per_kind": per_kind, "yes_share": yes_share, "false_yes": false_yes, "n": len(correct)}


def evaluate_on_outputs(critic, questions: list[LabelledQuestion], batch_size: int = 64) -> dict:
    """The critic's balanced accuracy per question kind on editor-output questions."""
    was_training = critic.model.training
    critic.model.eval()
    correct = []
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            correct += zip(chunk, yes_no_loss(critic, chunk)[1].bool().tolist())
    critic.model.train(was_training)
    return balanced_accuracy(correct)


def answer_balanced_sampler(questions: list[LabelledQuestion]):
    """A function drawing a question with Yes and No equally likely (editors' outputs are mostly failures)."""
    by_answer = defaultdict(list)
    for question in questions:
        by_answer[question.answer].append(question)
    pools = list(by_answer.values())
    return lambda rng: rng.choice(rng.choice(pools))


def finetune_on_outputs(out_dir: Path, editors: list[Path], *, minutes: float, max_steps: int | None = None,
                        seed: int = 0, per_type: int = 24, held_out_per_type: int = 8, share: float = 0.5,
                        batch_size: int = 32, lr: float = 2.5e-4, aux_weight: float = 0.5, eval_every_s: float = 600,
                        eval_per_kind: int = 24, progress: bool = True) -> dict:
    """Continue the critic in `out_dir/critic/` with `share` of every batch about the `editors`' outputs (answered by
    the verifier, Yes and No equally often), the rest the rendered questions of every kind so it forgets none;
    rewrites it and records this phase, with its accuracy on held-out outputs before and after, in its manifest.
    A killed run resumes from `critic_outputs_state.pt`."""
    out_dir = Path(out_dir)
    if not editors:
        raise ValueError("critic_outputs needs editors (--editors DIR ...): editor checkpoints such as "
                         "runs/*/checkpoints/step-*/generator from `npedit world experiment`")
    check_editors(editors)
    critic = QwenVLCritic.from_pretrained(out_dir / "critic", dtype=torch.float32)
    manifest = json.loads((out_dir / "critic" / "manifest.json").read_text())
    pool = editor_questions(editors, per_type)
    held_out = editor_questions(editors, held_out_per_type, seed=HELD_OUT_OUTPUTS_SEED)
    before = evaluate_on_outputs(critic, held_out)
    facts, quality = fit_critic(critic, out_dir / "critic_outputs_state.pt", minutes=minutes, max_steps=max_steps,
                                seed=seed + 2, batch_size=batch_size, lr=lr, aux_weight=aux_weight,
                                eval_every_s=eval_every_s, eval_per_kind=eval_per_kind, kinds=ALL_KINDS,
                                desc="world critic on editors' outputs", progress=progress,
                                extra=answer_balanced_sampler(pool), extra_share=share,
                                extra_eval=lambda: evaluate_on_outputs(critic, held_out))
    quality["editor_outputs"] = evaluate_on_outputs(critic, held_out)
    manifest.update(quality=quality, outputs_finetune={
        "editors": [str(e) for e in editors], "per_type": per_type, "questions": len(pool),
        "yes_share": float(np.mean([q.answer == "Yes" for q in pool])), "share": share, "seed": seed,
        "batch_size": batch_size, "lr": lr, "aux_weight": aux_weight, "before": before, **facts,
        "command": invocation()})
    return save_with_manifest(critic, out_dir / "critic", manifest)
