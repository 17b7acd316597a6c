"""What a perfect world VLM answers to each of the corpus builder's prompts, and training examples made of them.

Every answer is the compact JSON the stage's `PromptSpec.parse` accepts, keys in the schema's order and written with
`json.dumps`'s separators, as the builder's grammar-constrained decoder writes them. Images are shown as the corpus
stores them (`datasets_builder.images.normalise_image`: a JPEG), so the model learns on what it will be asked about.
"""

from __future__ import annotations

import io
import json
import random
import re
import string
from dataclasses import dataclass, replace
from functools import cached_property

from PIL import Image

from datasets_builder.images import normalise_image
from datasets_builder.vlm.prompts import BACKGROUNDS_PER_OBJECT, EDITS_PER_IMAGE, PROMPTS, TARGETED_EDIT_TYPES
from schemas import EDIT_TYPES, VlmStage
from world.edits import PHRASINGS, STYLE_WORDS, WorldEdit, make_edit, make_invalid_edit
from world.scene import (CAPTION_TEMPLATES, COLOURS, POSITIONS, SHAPES, TEXTURES, Scene, WorldObject, caption,
                         object_centric_scene, random_scene, render, with_objects)

CENTER = POSITIONS.index("center")
STAGE_WEIGHTS = {VlmStage.CAPTION: 1.0, VlmStage.PROPOSE: 1.0, VlmStage.VALIDATE: 2.0, VlmStage.OBJECT: 1.0,
                 VlmStage.BACKGROUND: 1.0}
INVALID_SHARE = 1 / 3  # of validation examples
COUNT_WORDS = {2: "two", 3: "three"}


def _json(**fields) -> str:
    return json.dumps(fields)


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


# -- answers -----------------------------------------------------------------------------------------------------------
def scene_caption(scene: Scene, phrasing: int = 0) -> str:
    """The caption with objects in reading order (by cell), so that the image alone decides the words."""
    return caption(with_objects(scene, sorted(scene.objects, key=lambda o: o.cell)), phrasing)


def caption_answer(scene: Scene) -> str:
    return _json(caption=scene_caption(scene))


def proposals(scene: Scene, rng: random.Random, count: int = EDITS_PER_IMAGE) -> list[WorldEdit]:
    """`count` valid edits of distinct types (types the scene cannot take are skipped), in `EDIT_TYPES` order."""
    types = list(EDIT_TYPES)
    rng.shuffle(types)
    edits = [e for e in (make_edit(scene, t, rng) for t in types) if e is not None][:count]
    return sorted(edits, key=lambda e: EDIT_TYPES.index(e.edit_type))


def propose_answer(scene: Scene, rng: random.Random, count: int = EDITS_PER_IMAGE) -> str:
    return _json(edits=[{"edit_type": e.edit_type, "instruction": e.instruction} for e in proposals(scene, rng, count)])


def validation_reasoning(edit: WorldEdit) -> str:
    """Why the edit is (in)valid, in a short templated sentence."""
    source, target, cell = edit.source, edit.target, edit.cell
    if not edit.valid:
        if edit.reason == "the object is not in the image":
            return f"{edit.target_object} is not in the image"
        if edit.edit_type == "background":
            return f"the background is already {source.background}"
        return f"{edit.target_object} is already {source.object_at(cell).colour}"
    if edit.edit_type == "insertion":
        new = target.object_at(cell)
        return f"the {POSITIONS[cell]} is free for {_a(f'{new.colour} {new.shape}')}"
    if edit.edit_type == "style":
        return f"the picture would turn {target.style}"
    if edit.edit_type == "background":
        return f"the background would turn {target.background}"
    if edit.edit_type == "remove":
        return f"{edit.target_object} is in the image and can be taken away"
    after = target.object_at(cell)
    change = {"replace": _a(f"{after.colour} {after.shape}"), "local_texture": after.texture,
              "shape_change": f"a {after.shape}", "local_color_change": after.colour}[edit.edit_type]
    return f"{edit.target_object} is in the image and would become {change}"


def validate_answer(edit: WorldEdit) -> str:
    targeted = edit.valid and edit.edit_type in TARGETED_EDIT_TYPES
    return _json(is_valid=edit.valid, reasoning=validation_reasoning(edit),
                 target_object=edit.target_object if targeted else "",
                 edited_caption=scene_caption(edit.target) if edit.valid else "")


def is_object_centric(scene: Scene) -> bool:
    """As `object_centric_scene` makes them: one large object in the centre cell on a plain background."""
    obj = scene.objects[0]
    return len(scene.objects) == 1 and obj.cell == CENTER and obj.size == "large" and scene.pattern == "plain"


def object_name(obj: WorldObject) -> str:
    """"a large red striped circle": the object without its place (sizes start with a consonant)."""
    return " ".join(["a", obj.size, obj.colour] + (["striped"] if obj.texture == "striped" else []) + [obj.shape])


def object_reasoning(scene: Scene) -> str:
    obj = scene.objects[0]
    if len(scene.objects) > 1:
        return f"there are {COUNT_WORDS[len(scene.objects)]} objects"
    if obj.cell != CENTER:
        return f"the only object is at the {POSITIONS[obj.cell]}, not in the center"
    if obj.size != "large":
        return "the only object is small"
    if scene.pattern != "plain":
        return "the background is striped"
    return f"{object_name(obj)} sits alone in the center on a plain background"


def object_answer(scene: Scene) -> str:
    centric = is_object_centric(scene)
    return _json(is_object_centric=centric, object_name=object_name(scene.objects[0]) if centric else "",
                 reasoning=object_reasoning(scene))


def background_scenes(scene: Scene, rng: random.Random, count: int = BACKGROUNDS_PER_OBJECT) -> list[Scene]:
    """The scene's single object in `count` new scenes: other background colours, patterns and cells."""
    obj = scene.objects[0]
    seen, out = {(scene.background, scene.pattern, obj.cell)}, []
    while len(out) < count:
        place = (rng.choice([c for c in COLOURS if c != obj.colour]), rng.choice(TEXTURES), rng.randrange(9))
        if place not in seen:
            seen.add(place)
            out.append(Scene(place[0], (replace(obj, cell=place[2], dx=0.0, dy=0.0),), pattern=place[1],
                             size=scene.size))
    return out


def background_answer(scene: Scene, rng: random.Random, count: int = BACKGROUNDS_PER_OBJECT) -> str:
    return _json(background_captions=[caption(s, i % len(CAPTION_TEMPLATES))
                                      for i, s in enumerate(background_scenes(scene, rng, count))])


# -- checking proposals ------------------------------------------------------------------------------------------------
FIELD_PATTERNS = {"target": r"the \w+ \w+", "new": r"an? \w+ \w+", "where": r"in the center|at the [a-z ]+",
                  "style": r"in [a-z ]+"}


def _pattern(template: str) -> re.Pattern:
    parts = [re.escape(text) + (f"(?P<{name}>{FIELD_PATTERNS.get(name, r'[a-z]+')})" if name else "")
             for text, name, _, _ in string.Formatter().parse(template)]
    return re.compile("".join(parts))


def proposal_fits(scene: Scene, edit_type: str, instruction: str) -> bool:
    """Whether an instruction is, in one of the world's phrasings of its type, a valid edit of the scene: objects it
    names are present, an insertion goes to a free cell, new colours and shapes are free, and it changes something."""
    fields = next((m.groupdict() for t in PHRASINGS.get(edit_type, ()) if (m := _pattern(t).fullmatch(instruction))),
                  None)
    if fields is None:
        return False
    objects = {o.name: o for o in scene.objects}
    colours = {o.colour for o in scene.objects} | {scene.background}
    shapes, cells = {o.shape for o in scene.objects}, {o.cell for o in scene.objects}
    target = objects.get(fields.get("target", ""))
    checks = [target is not None] if "target" in fields else []
    if "new" in fields:
        _, colour, shape = fields["new"].split()
        checks += [colour in COLOURS and colour not in colours, shape in SHAPES and shape not in shapes]
    if "where" in fields:
        where = fields["where"].removeprefix("in the ").removeprefix("at the ")
        checks += [len(scene.objects) < 3, where in POSITIONS and POSITIONS.index(where) not in cells]
    for key in ("colour", "background"):
        if key in fields:
            checks.append(fields[key] in COLOURS and fields[key] not in colours)
    if "shape" in fields:
        checks.append(fields["shape"] in SHAPES and fields["shape"] not in shapes)
    if "texture" in fields:
        checks.append(fields["texture"] in TEXTURES and target is not None and fields["texture"] != target.texture)
    if "style" in fields:
        checks.append(fields["style"] in STYLE_WORDS.values() and fields["style"] != STYLE_WORDS[scene.style])
    if edit_type == "remove":
        checks.append(len(scene.objects) >= 2)
    return all(checks)


# -- training examples -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuilderExample:
    """One request as the builder makes it (prompt text, stored image bytes) and the answer to learn; with the
    scene (and edit, for a validation) the answer is about."""

    stage: VlmStage
    prompt: str
    image: Image.Image  # the render
    answer: str
    scene: Scene
    fields: dict
    edit: WorldEdit | None = None

    @cached_property
    def image_bytes(self) -> bytes:
        """The image as the corpus stores it (the builder's backends read these bytes)."""
        return stored_image(self.image)


def stored_image(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return normalise_image(buffer.getvalue()).data


def validation_edit(scene: Scene, rng: random.Random, invalid_share: float = INVALID_SHARE) -> WorldEdit:
    """An invalid edit with probability `invalid_share`, else a valid edit of a type the scene takes."""
    if rng.random() < invalid_share:
        return make_invalid_edit(scene, rng)
    while (edit := make_edit(scene, rng.choice(EDIT_TYPES), rng)) is None:
        pass
    return edit


def builder_example(rng: random.Random, stage: VlmStage | None = None) -> BuilderExample:
    """A (stage, prompt, image, answer) example; the stage is drawn by `STAGE_WEIGHTS` unless given. Object
    judgements see object-centric scenes half the time; backgrounds always start from one."""
    stage = stage or rng.choices(list(STAGE_WEIGHTS), weights=list(STAGE_WEIGHTS.values()))[0]
    centric = stage == VlmStage.BACKGROUND or (stage == VlmStage.OBJECT and rng.random() < 0.5)
    scene = object_centric_scene(rng) if centric else random_scene(rng)
    edit, fields = None, {}
    if stage == VlmStage.CAPTION:
        answer = caption_answer(scene)
    elif stage == VlmStage.PROPOSE:
        fields = {"count": EDITS_PER_IMAGE}
        answer = propose_answer(scene, rng)
    elif stage == VlmStage.VALIDATE:
        edit = validation_edit(scene, rng)
        fields = {"edit_type": edit.edit_type, "instruction": edit.instruction}
        answer = validate_answer(edit)
    elif stage == VlmStage.OBJECT:
        answer = object_answer(scene)
    else:
        fields = {"object_name": object_name(scene.objects[0]), "count": BACKGROUNDS_PER_OBJECT}
        answer = background_answer(scene, rng)
    return BuilderExample(stage, PROMPTS[stage].render(**fields), render(scene), answer, scene, fields, edit)
