"""Tiny, seeded, random-weight checkpoints built locally, and the loaders shared by builder and trainer.

Every tiny model is saved with `save_pretrained` and loaded by path, exactly as a real checkpoint or hub id would be.
"""

from model_zoo.build import TinyModels, build_tiny_models, default_cache_dir, weights_digest

__all__ = ["TinyModels", "build_tiny_models", "default_cache_dir", "weights_digest"]
