"""Generator families behind one `Backbone` protocol (paper time convention at the boundary)."""

from training.backbones.base import Backbone, TextFeatures, noise_to, x0_from_velocity
from training.backbones.flux2_klein import Flux2KleinBackbone
from training.backbones.zimage import ZImageBackbone, omni_prompt_segments

BACKBONES = {pipeline: adapter for adapter in (ZImageBackbone, Flux2KleinBackbone)
             for pipeline in adapter.pipelines}  # diffusers pipeline -> adapter


def backbone_class(path) -> type:
    """The backbone adapter for a diffusers-layout checkpoint, from its model_index.json alone (no weights read)."""
    from diffusers import DiffusionPipeline

    from schemas.errors import ConfigError

    try:
        pipeline = DiffusionPipeline.load_config(str(path))["_class_name"]
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"model.generator: cannot read a diffusers model_index.json from {str(path)!r} "
                          f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    if pipeline not in BACKBONES:
        raise ConfigError(f"model.generator: no backbone for pipeline {pipeline!r} (known: {', '.join(BACKBONES)})")
    return BACKBONES[pipeline]

__all__ = [
    "BACKBONES",
    "Backbone",
    "backbone_class",
    "Flux2KleinBackbone",
    "TextFeatures",
    "ZImageBackbone",
    "noise_to",
    "omni_prompt_segments",
    "x0_from_velocity",
]
