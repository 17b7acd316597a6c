"""Two reference points for editors built on these world models, scored like an editor's outputs.

- **The target through the VAE**, a true ceiling: the true edited scene encoded and decoded by the editor's own VAE.
  An editor draws in that latent space, so whatever this loses (small shapes, stray pixels) no editor gets back.
- **The teacher drawing the target's caption** from noise (20 steps, classifier-free guidance): what DMD pulls the
  editor's outputs toward, with no source image to keep. Only the VLM term could lift an editor past it.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from training.backbones.base import Backbone
from training.sampling import generate_images
from world.edits import WorldEdit
from world.evaluate import summarise
from world.scene import caption
from world.score import score_edit
from world.vae import renders

CEILINGS = {
    "target_through_vae": "the true target encoded and decoded by the editor's VAE",
    "teacher_draws_target": "the teacher drawing the target's caption from noise (20 steps, guidance 3)",
}


def target_through_vae(backbone: Backbone, edits: list[WorldEdit], batch_size: int = 64) -> torch.Tensor:
    """The edits' rendered targets after a round trip through the backbone's VAE, in [-1, 1]."""
    with torch.no_grad():
        return torch.cat([backbone.decode_latents(backbone.encode_images(renders([e.target for e in
                                                                                 edits[i:i + batch_size]])))
                          for i in range(0, len(edits), batch_size)]).clamp(-1, 1)


def teacher_draws_target(backbone: Backbone, edits: list[WorldEdit], *, steps: int = 20, cfg_scale: float = 3.0,
                         seed: int = 0) -> torch.Tensor:
    """The teacher's samples for the edits' target captions (phrasings in turn), in [-1, 1]."""
    size = edits[0].target.size
    return generate_images(backbone, [caption(e.target, i) for i, e in enumerate(edits)], size=(size, size),
                           num_steps=steps, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(seed))


def ceilings(teacher: Backbone, edits: list[WorldEdit], *, seed: int = 0) -> dict[str, dict[str, dict]]:
    """Per ceiling (`CEILINGS`), the verifier's scores per edit type and their mean, as an editor's run has them."""
    outputs = {"target_through_vae": target_through_vae(teacher, edits),
               "teacher_draws_target": teacher_draws_target(teacher, edits, seed=seed)}
    return {name: {edit_type: asdict(s) for edit_type, s in
                   summarise(edits, [score_edit(e, o) for e, o in zip(edits, images)]).items()}
            for name, images in outputs.items()}
