"""Generator families behind one `Backbone` protocol (paper time convention at the boundary)."""

from training.backbones.base import Backbone, TextFeatures, noise_to, x0_from_velocity
from training.backbones.zimage import ZImageBackbone, omni_prompt_segments

__all__ = ["Backbone", "TextFeatures", "ZImageBackbone", "noise_to", "omni_prompt_segments", "x0_from_velocity"]
