"""The VLM stages of the corpus: plain functions from Arrow tables (+ a runner) to (rows, rejects) tables."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from datasets_builder.vlm import PROMPTS, PromptInput, VlmResult, VlmRunner
from datasets_builder.vlm.prompts import BACKGROUNDS_PER_OBJECT, EDITS_PER_IMAGE, INSTRUCTION_WORDS, TARGETED_EDIT_TYPES
from schemas import BACKGROUND_PROMPTS, CAPTIONS, EDIT_INSTRUCTIONS, EDIT_PROPOSALS, OBJECTS, VLM_REJECTS, VlmStage

Rows = list[dict[str, Any]]
Dropped = list[tuple[Any, str]]  # (the part of an answer that was not kept, why)


def proposal_id(image_id: str, edit_type: str, instruction: str, provenance: dict[str, str]) -> str:
    """Unique per (image, edit, and the model/prompt/sampling that proposed it)."""
    parts = (image_id, edit_type, instruction, provenance["model_id"], provenance["prompt_version"],
             provenance["sampling"])
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _image_inputs(images: pa.Table, fields: Callable[[dict], dict] = lambda row: {}) -> list[PromptInput]:
    return [
        PromptInput(row["image_id"], row["image"], fields(row))
        for row in images.select(["image_id", "image"]).to_pylist()
    ]


def _run(
    runner: VlmRunner,
    stage: VlmStage,
    items: list[PromptInput],
    to_rows: Callable[[VlmResult, dict], tuple[Rows, Dropped]],
) -> tuple[Rows, Rows]:
    """Run one stage. A parse error or a broken rule (ValueError from `to_rows`) rejects the whole answer; a part
    of an answer that is not kept (a repeated edit type, say) is a reject of its own, keyed by answer and position."""
    prompt = PROMPTS[stage]
    provenance = runner.provenance(prompt)
    kept, rejected = [], []

    def reject(request_hash: str, raw: str, error: str, item: PromptInput) -> None:
        rejected.append(dict(**provenance, request_hash=request_hash, stage=stage.value, image_id=item.image_id,
                             raw_text=raw, error=error, proposal_id=item.key))

    for result in runner.run(prompt, items):
        if result.error is not None:
            reject(result.request_hash, result.raw, result.error, result.item)
            continue
        try:
            rows, dropped = to_rows(result, provenance)
        except ValueError as exc:
            reject(result.request_hash, result.raw, str(exc), result.item)
            continue
        kept += rows
        for position, (part, why) in dropped:
            part_hash = hashlib.sha256(f"{result.request_hash}:{position}".encode()).hexdigest()
            reject(part_hash, json.dumps(part), why, result.item)
    return kept, rejected


def caption_images(images: pa.Table, runner: VlmRunner) -> tuple[pa.Table, pa.Table]:
    """The reference caption c^y of each image."""

    def rows(result: VlmResult, provenance: dict) -> tuple[Rows, Dropped]:
        return [dict(**provenance, image_id=result.item.image_id, caption=result.parsed["caption"].strip())], []

    kept, rejected = _run(runner, VlmStage.CAPTION, _image_inputs(images), rows)
    return CAPTIONS.to_arrow(kept), VLM_REJECTS.to_arrow(rejected)


def propose_edits(images: pa.Table, runner: VlmRunner) -> tuple[pa.Table, pa.Table]:
    """Several instructions per image, each of a different edit type (a repeated type keeps its first)."""
    items = _image_inputs(images, lambda row: {"count": EDITS_PER_IMAGE})

    def rows(result: VlmResult, provenance: dict) -> tuple[Rows, Dropped]:
        out, seen, dropped = [], set(), []
        for position, edit in enumerate(result.parsed["edits"]):
            instruction = edit["instruction"].strip()
            if edit["edit_type"] in seen:
                dropped.append((position, (edit, f"repeats edit type {edit['edit_type']!r} (the first is kept)")))
                continue
            if len(instruction) < 5:
                dropped.append((position, (edit, "instruction shorter than 5 characters")))
                continue
            seen.add(edit["edit_type"])
            pid = proposal_id(result.item.image_id, edit["edit_type"], instruction, provenance)
            out.append(dict(**provenance, proposal_id=pid, image_id=result.item.image_id,
                            edit_type=edit["edit_type"], instruction=instruction))
        if not out:
            raise ValueError("no usable instruction in the answer")
        return out, dropped

    kept, rejected = _run(runner, VlmStage.PROPOSE, items, rows)
    return EDIT_PROPOSALS.to_arrow(kept), VLM_REJECTS.to_arrow(rejected)


def validate_edits(
    proposals: pa.Table, images: pa.Table, captions: pa.Table, runner: VlmRunner
) -> tuple[pa.Table, pa.Table]:
    """Judge each proposal; valid ones get the caption c^x of the edited image (the DMD teacher's condition).

    Each row also names the edit's target object (what a removal removes, a replace replaces, ...; the critic's
    questions ask about it): NULL when the model names none or the edit type has none (insertion, style, background).
    """
    image_bytes = dict(zip(images.column("image_id").to_pylist(), images.column("image").to_pylist()))
    reference = dict(zip(captions.column("image_id").to_pylist(), captions.column("caption").to_pylist()))
    proposal_rows = {p["proposal_id"]: p for p in proposals.to_pylist()}
    items = [
        PromptInput(p["image_id"], image_bytes[p["image_id"]],
                    {"edit_type": p["edit_type"], "instruction": p["instruction"]}, key=p["proposal_id"])
        for p in proposal_rows.values()
        if p["image_id"] in image_bytes
    ]

    def rows(result: VlmResult, provenance: dict) -> tuple[Rows, Dropped]:
        answer, proposal = result.parsed, proposal_rows[result.item.key]
        caption = answer["edited_caption"].strip()
        if answer["is_valid"] and len(caption) < 5:
            raise ValueError("judged valid but the edited caption is empty")
        if answer["is_valid"] and INSTRUCTION_WORDS.search(caption):
            raise ValueError(f"edited caption uses instruction words: {INSTRUCTION_WORDS.search(caption).group(0)!r}")
        target = answer["target_object"].strip() if proposal["edit_type"] in TARGETED_EDIT_TYPES else ""
        return [dict(**provenance, proposal_id=proposal["proposal_id"], image_id=proposal["image_id"],
                     edit_type=proposal["edit_type"], instruction=proposal["instruction"],
                     is_valid=answer["is_valid"], reasoning=answer["reasoning"].strip(),
                     edited_caption=caption if answer["is_valid"] else None,
                     reference_caption=reference.get(proposal["image_id"]), target_object=target or None)], []

    kept, rejected = _run(runner, VlmStage.VALIDATE, items, rows)
    return EDIT_INSTRUCTIONS.to_arrow(kept), VLM_REJECTS.to_arrow(rejected)


def judge_objects(images: pa.Table, runner: VlmRunner) -> tuple[pa.Table, pa.Table]:
    """Object-centric judgement for customization data: one distinct, centred, fully visible object."""

    def rows(result: VlmResult, provenance: dict) -> tuple[Rows, Dropped]:
        answer = result.parsed
        name = answer["object_name"].strip()
        if answer["is_object_centric"] and not name:
            raise ValueError("judged object-centric but the object name is empty")
        return [dict(**provenance, image_id=result.item.image_id, is_object_centric=answer["is_object_centric"],
                     object_name=name if answer["is_object_centric"] else None,
                     reasoning=answer["reasoning"].strip())], []

    kept, rejected = _run(runner, VlmStage.OBJECT, _image_inputs(images), rows)
    return OBJECTS.to_arrow(kept), VLM_REJECTS.to_arrow(rejected)


def propose_backgrounds(objects: pa.Table, images: pa.Table, runner: VlmRunner) -> tuple[pa.Table, pa.Table]:
    """New-background captions for every object-centric image."""
    names = {
        row["image_id"]: row["object_name"]
        for row in objects.to_pylist()
        if row["is_object_centric"] and row["object_name"]
    }
    selected = images.filter(pc.is_in(images.column("image_id"), pa.array(list(names), pa.string())))
    items = _image_inputs(selected, lambda row: {"object_name": names[row["image_id"]],
                                                 "count": BACKGROUNDS_PER_OBJECT})

    def rows(result: VlmResult, provenance: dict) -> tuple[Rows, Dropped]:
        captions, dropped = [], []
        for position, caption in enumerate(c.strip() for c in result.parsed["background_captions"]):
            if len(caption) < 10:
                dropped.append((position, (caption, "background caption shorter than 10 characters")))
            elif caption in captions:
                dropped.append((position, (caption, "repeats an earlier background caption")))
            else:
                captions.append(caption)
        if not captions:
            raise ValueError("no usable background caption in the answer")
        return [dict(**provenance, image_id=result.item.image_id, index=i,
                     object_name=result.item.fields["object_name"], background_caption=c)
                for i, c in enumerate(captions)], dropped

    kept, rejected = _run(runner, VlmStage.BACKGROUND, items, rows)
    return BACKGROUND_PROMPTS.to_arrow(kept), VLM_REJECTS.to_arrow(rejected)
