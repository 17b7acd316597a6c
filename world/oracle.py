"""The world oracle VLM: a classical stand-in for a VLM (like the verifier, no learned model) that answers the corpus
builder's five prompts about a world image with the world's truth, behind an OpenAI-compatible chat-completions
endpoint on loopback, so the real builder reaches it through its `openai` backend.

It reads the image with `world.verify.parse_image`, recognises the stage from the prompt text (`PROMPTS[stage]`'s
template) and answers with `world.builder_answers`. Validation recovers the edit from the instruction by inverting
`world.edits.PHRASINGS`. An image the parse cannot read gets a plain-text answer the stage rejects as not JSON
(the object-centric judgement says "no" instead). Answers are deterministic: any randomness is seeded from a hash of
the image bytes and the prompt. Like a real proposer, a share of its proposals do not fit the image (an absent
object, or no change), so the validity stage has both verdicts to give.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import io
import json
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from PIL import Image

from datasets_builder.loopback import serving
from datasets_builder.vlm.prompts import PROMPTS
from schemas import VlmStage
from schemas.errors import ConfigError
from world import builder_answers, edits, scene as scene_module, verify
from world.builder_answers import (INVALID_SHARE, background_answer, caption_answer, object_answer, object_name,
                                   proposals, validate_answer)
from world.edits import PHRASINGS, STYLE_WORDS, TEXTURE_WORDS, WorldEdit
from world.scene import COLOURS, POSITIONS, SHAPES, TEXTURES, Scene, WorldObject, random_object, with_objects
from world.verify import parse_image


def _model_id() -> str:
    """Names the oracle by its answering code, so the builder's answer cache never serves another version's answers."""
    sources = [Path(m.__file__).read_bytes() for m in (builder_answers, edits, scene_module, verify)]
    return "world-oracle-" + hashlib.sha256(Path(__file__).read_bytes() + b"".join(sources)).hexdigest()[:10]


ORACLE_MODEL = _model_id()
ABSENT = "the object is not in the image"  # the reason `world.edits` gives such an invalid edit
FIELD_PATTERNS = {"target": r"the [a-z]+ [a-z]+", "new": r"an? [a-z]+ [a-z]+", "where": r"in the center|at the [a-z ]+",
                  "style": r"in [a-z ]+"}


# -- reading requests --------------------------------------------------------------------------------------------------
def _template_regex(template: str, field_pattern) -> re.Pattern:
    """A template's literal text escaped, each `{field}` a named group matching `field_pattern(name)`."""
    parts = [re.escape(text) + (f"(?P<{name}>{field_pattern(name)})" if name else "")
             for text, name, _, _ in string.Formatter().parse(template)]
    return re.compile("".join(parts), re.DOTALL)


STAGE_PATTERNS = {stage: _template_regex(spec.template, lambda name: ".*?") for stage, spec in PROMPTS.items()}
INSTRUCTION_PATTERNS = {edit_type: [_template_regex(t, lambda name: FIELD_PATTERNS.get(name, r"[a-z]+"))
                                    for t in templates] for edit_type, templates in PHRASINGS.items()}


def recognise(text: str) -> tuple[VlmStage, dict[str, str]] | None:
    """Which stage's prompt `text` is, and the fields it was filled with (None: no builder prompt)."""
    for stage, pattern in STAGE_PATTERNS.items():
        if match := pattern.fullmatch(text):
            return stage, match.groupdict()
    return None


def read_instruction(edit_type: str, instruction: str) -> dict[str, str] | None:
    """The fields of an instruction written in one of the world's phrasings of `edit_type` (None: it is not)."""
    text = instruction.strip().removesuffix(".")
    return next((m.groupdict() for p in INSTRUCTION_PATTERNS.get(edit_type, ()) if (m := p.fullmatch(text))), None)


@lru_cache(maxsize=4096)
def read_scene(image: bytes) -> tuple[Scene | None, str]:
    """The scene a world image shows, or None with why it cannot be read."""
    try:
        parsed = parse_image(Image.open(io.BytesIO(image)).convert("RGB"))
    except (OSError, ValueError) as error:
        return None, f"not an image: {error}"
    if not parsed.realistic:
        return None, "; ".join(parsed.problems)
    try:
        objects = tuple(WorldObject(o.shape, o.colour, o.cell, size=o.size, texture=o.texture)
                        for o in sorted(parsed.objects, key=lambda o: o.cell))
        return Scene(parsed.background, objects, pattern=parsed.pattern, style=parsed.style), ""
    except ConfigError as error:
        return None, str(error)


# -- judging instructions ----------------------------------------------------------------------------------------------
def _invalid(edit_type: str, instruction: str, scene: Scene, reason: str, target: str | None = None) -> WorldEdit:
    return WorldEdit(edit_type, instruction, scene, scene, target, valid=False, reason=reason)


def _free_colour(scene: Scene, colour: str) -> str:
    """Why `colour` cannot be given to an object (or the background), '' when it can."""
    if colour not in COLOURS:
        return f"{colour} is not a colour of this world"
    if colour == scene.background:
        return f"the background is already {colour}"
    holder = next((o for o in scene.objects if o.colour == colour), None)
    return f"{holder.name} is already {colour}" if holder else ""


def _free_shape(scene: Scene, shape: str) -> str:
    if shape not in SHAPES:
        return f"{shape} is not a shape of this world"
    holder = next((o for o in scene.objects if o.shape == shape), None)
    return f"{holder.name} is already a {shape}" if holder else ""


def judge(scene: Scene, edit_type: str, instruction: str, rng: random.Random) -> WorldEdit:
    """The edit an instruction asks of the scene, valid when it names what is there, changes something and leaves a
    world scene (objects of distinct shapes and colours, one per cell); otherwise invalid with the reason.
    An insertion's unnamed size and texture are drawn from `rng`."""
    fields = read_instruction(edit_type, instruction)
    if fields is None:
        return _invalid(edit_type, instruction, scene, f"the instruction does not read as a {edit_type} edit")
    objects = {o.name: o for o in scene.objects}
    obj = objects.get(fields.get("target", ""))
    name = fields.get("target")
    if "target" in fields and obj is None:
        return _invalid(edit_type, instruction, scene, ABSENT, name)
    others = [o for o in scene.objects if o is not obj]
    if edit_type == "insertion":
        _, colour, shape = fields["new"].split()
        where = fields["where"].removeprefix("in the ").removeprefix("at the ")
        holder = scene.object_at(POSITIONS.index(where)) if where in POSITIONS else None
        problem = (("the image already holds three objects" if len(scene.objects) >= 3 else "")
                   or ("" if where in POSITIONS else f"{where} is not a place in the picture")
                   or (f"the {where} is taken by {holder.name}" if holder else "")
                   or _free_colour(scene, colour) or _free_shape(scene, shape))
        if problem:
            return _invalid(edit_type, instruction, scene, problem)
        new = random_object(rng, shape=shape, colour=colour, cell=POSITIONS.index(where))
        return WorldEdit(edit_type, instruction, scene, with_objects(scene, [*scene.objects, new]), None, new.cell)
    if edit_type == "style":
        style = next((s for s, words in STYLE_WORDS.items() if words == fields["style"]), None)
        if style is None or style == scene.style:
            return _invalid(edit_type, instruction, scene, "the edit changes nothing" if style else
                            f"{fields['style']!r} is not a style of this world")
        return WorldEdit(edit_type, instruction, scene, replace(scene, style=style), None)
    if edit_type == "background":
        colour = fields["background"]
        problem = "the edit changes nothing" if colour == scene.background else _free_colour(scene, colour)
        if problem:
            return _invalid(edit_type, instruction, scene, problem)
        return WorldEdit(edit_type, instruction, scene, replace(scene, background=colour), None)
    if edit_type == "remove":
        if not others:
            return _invalid(edit_type, instruction, scene, f"{name} is the only object in the image", name)
        return WorldEdit(edit_type, instruction, scene, with_objects(scene, others), name, obj.cell)
    if edit_type == "replace":
        _, colour, shape = fields["new"].split()
        problem = ("the edit changes nothing" if (colour, shape) == (obj.colour, obj.shape) else
                   _free_colour(scene, colour) or _free_shape(scene, shape))
        after = replace(obj, colour=colour, shape=shape)
    elif edit_type == "local_texture":
        texture = next((t for t, word in TEXTURE_WORDS.items() if word == fields["texture"]), None)
        problem = (f"{fields['texture']!r} is not a texture of this world" if texture is None else
                   "the edit changes nothing" if texture == obj.texture else "")
        after = replace(obj, texture=texture or obj.texture)
    elif edit_type == "shape_change":
        shape = fields["shape"]
        problem = "the edit changes nothing" if shape == obj.shape else _free_shape(scene, shape)
        after = replace(obj, shape=shape)
    elif edit_type == "local_color_change":
        colour = fields["colour"]
        problem = "the edit changes nothing" if colour == obj.colour else _free_colour(scene, colour)
        after = replace(obj, colour=colour)
    else:
        return _invalid(edit_type, instruction, scene, f"{edit_type!r} is not an edit type")
    if problem:
        return _invalid(edit_type, instruction, scene, problem, name)
    return WorldEdit(edit_type, instruction, scene, with_objects(scene, [*others, after]), name, obj.cell)


def invalid_instruction(scene: Scene, edit_type: str, rng: random.Random) -> str | None:
    """An instruction of `edit_type` that does not fit the scene: it names an absent object or changes nothing
    (None for an insertion: the world has no such mistake to make with one)."""
    if edit_type == "insertion":
        return None
    phrasing = rng.choice(PHRASINGS[edit_type])
    if edit_type == "style":
        return phrasing.format(style=STYLE_WORDS[scene.style])
    if edit_type == "background":
        return phrasing.format(background=scene.background)
    obj = rng.choice(scene.objects)
    if rng.random() < 0.5 and edit_type in ("local_texture", "shape_change", "local_color_change"):
        return phrasing.format(target=obj.name, texture=TEXTURE_WORDS[obj.texture], shape=obj.shape, colour=obj.colour)
    unused = [c for c in COLOURS if c != scene.background and all(o.colour != c for o in scene.objects)]
    absent, new = f"the {rng.choice(unused)} {rng.choice(SHAPES)}", rng.choice(unused)
    return phrasing.format(target=absent, new=f"{'an' if new[0] in 'aeiou' else 'a'} {new} {rng.choice(SHAPES)}",
                           texture=rng.choice(TEXTURES), shape=rng.choice(SHAPES), colour=new)


# -- answering ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldOracle:
    """Answers builder prompts about world images; `invalid_share` of proposals (insertions aside) do not fit."""

    invalid_share: float = INVALID_SHARE

    def answer(self, image: bytes, text: str) -> str:
        """The answer to one request (`text` is the rendered prompt); a `ValueError` for a prompt of no stage."""
        recognised = recognise(text)
        if recognised is None:
            raise ValueError(f"not a builder prompt: {text[:80]!r}")
        stage, fields = recognised
        rng = random.Random(int.from_bytes(hashlib.sha256(image + b"\0" + text.encode()).digest()[:8], "big"))
        scene, problem = read_scene(image)
        if scene is None:
            if stage == VlmStage.OBJECT:
                return json.dumps({"is_object_centric": False, "object_name": "",
                                   "reasoning": f"the image is not a readable scene: {problem}"[:600]})
            return f"unreadable world image: {problem}"
        if stage == VlmStage.CAPTION:
            return caption_answer(scene)
        if stage == VlmStage.PROPOSE:
            return self.propose(scene, rng, int(fields["count"]))
        if stage == VlmStage.VALIDATE:
            edit = judge(scene, fields["edit_type"], fields["instruction"], rng)
            if edit.valid:
                return validate_answer(edit)
            absent = edit.reason == ABSENT
            reasoning = f"{edit.target_object} is not in the image" if absent else edit.reason
            return json.dumps({"is_valid": False, "reasoning": reasoning, "target_object": "", "edited_caption": ""})
        if stage == VlmStage.OBJECT:
            return object_answer(scene)
        named = [o for o in scene.objects if object_name(o) == fields["object_name"]]
        subject = scene if len(scene.objects) == 1 else with_objects(scene, named[:1]) if named else None
        if subject is None:
            return f"the image holds no {fields['object_name']}"
        return background_answer(subject, rng, int(fields["count"]))

    def propose(self, scene: Scene, rng: random.Random, count: int) -> str:
        """`count` edits of distinct types; each but an insertion is, with `invalid_share`, one that does not fit."""
        chosen = []
        for edit in proposals(scene, rng, count):
            wrong = rng.random() < self.invalid_share and invalid_instruction(scene, edit.edit_type, rng)
            chosen.append({"edit_type": edit.edit_type, "instruction": wrong or edit.instruction})
        return json.dumps({"edits": chosen})


# -- the endpoint ------------------------------------------------------------------------------------------------------
def _handler(oracle: WorldOracle) -> type[http.server.BaseHTTPRequestHandler]:
    class ChatCompletions(http.server.BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
            pass

        def _reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 - the stdlib's name
            if not self.path.endswith("/chat/completions"):
                self._reply(404, {"error": {"message": f"no endpoint {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
                text = next(c["text"] for c in content if c["type"] == "text")
                answer = oracle.answer(base64.b64decode(url.split(",", 1)[1]), text)
            except (KeyError, StopIteration, ValueError, TypeError, IndexError) as error:
                self._reply(400, {"error": {"message": f"the world oracle cannot answer this request: {error}"}})
                return
            self._reply(200, {"object": "chat.completion", "model": body.get("model", ORACLE_MODEL),
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": answer}}]})

    return ChatCompletions


@contextlib.contextmanager
def serve_oracle(oracle: WorldOracle = WorldOracle()) -> Iterator[str]:
    """The oracle on a free loopback port for the duration of the block; yields the base URL (…/v1)."""
    with serving(_handler(oracle)) as url:
        yield f"{url}/v1"


__all__ = ["ORACLE_MODEL", "WorldOracle", "invalid_instruction", "judge", "read_instruction",
           "read_scene", "recognise", "serve_oracle"]
