"""A small snapshot written straight through the `schemas` contract (no VLM): what the trainer's tests read."""

from __future__ import annotations

import hashlib
from pathlib import Path

from datasets_builder import lake
from datasets_builder.images import normalise_image
from odd_images import SAMPLES
from schemas import BACKGROUND_PROMPTS, CAPTIONS, EDIT_INSTRUCTIONS, IMAGES, OBJECTS

PROVENANCE = dict(model_id="fixture", prompt_version="fixture-1", sampling="{}", backend="transformers")
EDITS = [
    ("astronaut.jpg", "insertion", "Add a red hot air balloon in the sky", "an astronaut with a red balloon in the sky"),
    ("coffee.jpg", "remove", "Remove the cup of coffee", "an empty saucer on a table"),
    ("rocket.jpg", "style", "Turn the photo into a watercolor painting", "a watercolor painting of a rocket"),
    ("horse.jpg", "local_color_change", "Make the horse bright blue", "a bright blue horse silhouette"),
    ("chelsea.jpg", "background", "Change the background to a snowy forest", "a cat in a snowy forest"),
    ("brick.jpg", "local_texture", "Make the bricks look like wood", "a wall of wooden planks"),
]

# Object-centric judgements and background prompts (written with `objects=True`): two object-centric images with two
# scenes each, and one image judged not object-centric whose stray prompt must not become a sample.
OBJECTS_CENTRIC = {"coffee.jpg": "the cup of coffee", "horse.jpg": "the horse"}
SCENES = ["on a wooden table in a sunny garden", "on a snowy mountain top at dawn"]
NOT_CENTRIC = "astronaut.jpg"

# Reference captions of the source images; the rocket has none (a sample the caption-conditioned warmup falls back on).
REFERENCE_CAPTIONS = {"astronaut.jpg": "an astronaut standing beside a flag", "coffee.jpg": "a cup of coffee on a saucer",
                      "horse.jpg": "a horse silhouette", "chelsea.jpg": "a cat sitting in front of a wall",
                      "brick.jpg": "a wall of red bricks"}

TARGETS = {"Remove the cup of coffee": "the white coffee cup", "Make the horse bright blue": "the horse"}


def write_fixture_snapshot(root: Path | lake.LakeConfig, tag: str = "fixture", *,
                           objects: bool = False) -> lake.LakeConfig:
    """Publish the fixture edits (and with `objects`, object judgements and background prompts) into a lake folder
    (or any lake) as snapshot `tag`."""
    store = root if isinstance(root, lake.LakeConfig) else lake.LakeConfig.local(root)
    images, edits = [], []
    for name, edit_type, instruction, caption in EDITS:
        result = normalise_image((SAMPLES / name).read_bytes())
        images.append(dict(image_id=result.image_id, source=name, width=result.width, height=result.height,
                           original_width=result.original_width, original_height=result.original_height,
                           format=result.format, shard="fixture", image=result.data))
        proposal_id = hashlib.sha256(f"{name}{instruction}".encode()).hexdigest()
        edits.append(dict(**PROVENANCE, proposal_id=proposal_id, image_id=result.image_id, edit_type=edit_type,
                          instruction=instruction, is_valid=True, reasoning="fixture", edited_caption=caption,
                          target_object=TARGETS.get(instruction)))
    edits.append({**edits[0], "proposal_id": "0" * 64, "is_valid": False, "edited_caption": None})
    captions = [dict(**PROVENANCE, image_id=image["image_id"], caption=REFERENCE_CAPTIONS[image["source"]])
                for image in images if image["source"] in REFERENCE_CAPTIONS]
    files = {"images": [lake.write_staged(store, IMAGES, IMAGES.to_arrow(images), "fixture")],
             "captions": [lake.write_staged(store, CAPTIONS, CAPTIONS.to_arrow(captions), "fixture")],
             "edit_instructions": [lake.write_staged(store, EDIT_INSTRUCTIONS, EDIT_INSTRUCTIONS.to_arrow(edits),
                                                     "fixture")]}
    if objects:
        ids = {image["source"]: image["image_id"] for image in images}
        judged = [dict(**PROVENANCE, image_id=ids[name], is_object_centric=name in OBJECTS_CENTRIC,
                       object_name=OBJECTS_CENTRIC.get(name), reasoning="fixture")
                  for name in (*OBJECTS_CENTRIC, NOT_CENTRIC)]
        prompts = [dict(**PROVENANCE, image_id=ids[name], index=i, object_name=thing, background_caption=f"{thing} {scene}")
                   for name, thing in OBJECTS_CENTRIC.items() for i, scene in enumerate(SCENES)]
        prompts.append(dict(**PROVENANCE, image_id=ids[NOT_CENTRIC], index=0, object_name="the astronaut",
                            background_caption="the astronaut on a beach"))
        files["objects"] = [lake.write_staged(store, OBJECTS, OBJECTS.to_arrow(judged), "fixture")]
        files["background_prompts"] = [lake.write_staged(store, BACKGROUND_PROMPTS, BACKGROUND_PROMPTS.to_arrow(prompts),
                                                         "fixture")]
    lake.publish(store, files, message="fixture", tag=tag)
    return store


def fixture_train_config(lake_dir, tiny_models, **overrides):
    """The `debug_tiny` recipe on the fixture snapshot in `lake_dir` with the tiny zoo's models, plus overrides."""
    from training.config import load_config

    base = {"data.lake_dir": str(lake_dir), "model.generator": str(tiny_models.generator),
            "model.critic": str(tiny_models.vlm)}
    return load_config("debug_tiny", overrides={**base, **overrides})
