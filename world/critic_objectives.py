"""Auxiliary objectives that speed up a critic learning from nothing (training-only heads; the saved critic is a
plain Qwen2.5-VL). A Yes/No answer is one bit per question; these give dense labels for the computations the
answer needs:

- vision: the colour-family shares of every 8x8 block and how much of it is background (perception);
- change: at each token of the second image, whether its 16x16 block differs from the first image's (comparison);
- target: at the answer position, which blocks of the first image hold the object the instruction names (binding
  words to places);
- attributes: at the answer position, what each image holds where the edit acts (an object or not, its colour,
  shape and texture) and its background and style: the facts an edit question's answer is a comparison of.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from world.questions import LabelledQuestion
from world.scene import SHAPES, STYLES, TEXTURES, object_coverage
from world.verify import NAMES, PALETTES

BLOCK = 8  # pixels per side of a vision patch
TOKEN = 16  # pixels per side of a merged image token (patch x merge)
CHANGED = 12.0  # mean absolute difference (0..255) above which a token's block counts as changed


def _token_order(grid: np.ndarray) -> np.ndarray:
    """(n, n, ...) per 8x8 block -> (n*n, ...) in merged-token order (each token's 2x2 blocks row-major)."""
    n = grid.shape[0]
    return grid.reshape(n // 2, 2, n // 2, 2, *grid.shape[2:]).transpose(0, 2, 1, 3, *range(4, grid.ndim + 2)) \
        .reshape(n * n, *grid.shape[2:])


def dense_labels(pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per 8x8 block, in merged-token order: the share of its pixels in each colour family (nearest palette tone,
    either style; small objects are a minority of any block) and the share in the image's background family."""
    flat = pixels.reshape(-1, 3).astype(np.float32)
    tones = np.concatenate(list(PALETTES.values()))
    distance = (tones**2).sum(1)[None] - 2 * flat @ tones.T  # squared distance, less the pixel's own norm
    family = distance.argmin(axis=1) % len(NAMES)
    n = pixels.shape[0] // BLOCK
    one_hot = np.eye(len(NAMES), dtype=np.float32)[family].reshape(n, BLOCK, n, BLOCK, len(NAMES))
    shares = _token_order(one_hot.mean(axis=(1, 3)))
    background = np.bincount(family, minlength=len(NAMES)).argmax()
    return torch.from_numpy(np.ascontiguousarray(shares)), torch.from_numpy(shares[:, background].copy())


def _per_token(values: np.ndarray) -> np.ndarray:
    """(H, W) -> (tokens,) mean over each 16x16 block, row-major."""
    n = values.shape[0] // TOKEN
    return values.reshape(n, TOKEN, n, TOKEN).mean(axis=(1, 3)).reshape(-1)


def change_map(first: np.ndarray, second: np.ndarray) -> torch.Tensor:
    """(tokens,) 1 where the second image's 16x16 block differs visibly from the first's."""
    return torch.from_numpy((_per_token(np.abs(second - first).mean(axis=2)) > CHANGED).astype(np.float32))


def target_map(question: LabelledQuestion) -> torch.Tensor | None:
    """(tokens,) 1 where the first image's block holds part of the object the edit acts on (the new object's
    place for an insertion); None when the edit names no object or the question shows one image."""
    edit = question.edit
    if edit.cell is None or len(question.images) < 2:
        return None
    scene = edit.target if edit.edit_type == "insertion" else edit.source
    obj = scene.object_at(edit.cell)
    return torch.from_numpy((_per_token(object_coverage(obj, scene.size)) > 0.05).astype(np.float32))


ATTRIBUTES = {"present": 2, "colour": len(NAMES), "shape": len(SHAPES), "texture": len(TEXTURES),
              "background": len(NAMES), "style": len(STYLES)}


def attribute_labels(question: LabelledQuestion) -> list[dict[str, int]] | None:
    """Per image, the class of each attribute at the edit's cell (-100: nothing to say, e.g. no object there);
    None when an image is ruined or the edit names no cell."""
    cell = question.edit.cell
    if any(scene is None for scene in question.scenes) or not question.scenes:
        return None
    labels = []
    for scene in question.scenes:
        obj = scene.object_at(cell) if cell is not None else None
        labels.append({"present": -100 if cell is None else int(obj is not None),
                       "colour": NAMES.index(obj.colour) if obj else -100,
                       "shape": SHAPES.index(obj.shape) if obj else -100,
                       "texture": TEXTURES.index(obj.texture) if obj else -100,
                       "background": NAMES.index(scene.background), "style": STYLES.index(scene.style)})
    return labels


class AuxiliaryObjectives(torch.nn.Module):
    """Heads on the critic's vision tokens and final hidden states, fed by forward hooks during `answer_logits`."""

    def __init__(self, critic, *, tokens_per_image: int = 16):
        super().__init__()
        model = critic.model
        width, vision_width = model.config.text_config.hidden_size, model.config.vision_config.out_hidden_size
        self.colour = torch.nn.Linear(vision_width, 4 * len(NAMES))
        self.background = torch.nn.Linear(vision_width, 4)
        self.change = torch.nn.Linear(width, 1)
        self.target = torch.nn.Linear(width, tokens_per_image)
        self.attributes = torch.nn.ModuleDict({f"{image}_{name}": torch.nn.Linear(width, classes)
                                               for image in (0, 1) for name, classes in ATTRIBUTES.items()})
        self.image_token_id, self.tokens_per_image = model.config.image_token_id, tokens_per_image
        self.seen: dict[str, torch.Tensor] = {}
        self._hooks = [
            model.model.visual.register_forward_hook(lambda m, i, o: self.seen.__setitem__("vision", o.pooler_output)),
            model.model.language_model.norm.register_forward_hook(lambda m, i, o: self.seen.__setitem__("hidden", o)),
            model.register_forward_pre_hook(lambda m, a, k: self.seen.__setitem__("ids", k["input_ids"]),
                                            with_kwargs=True),
        ]

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def loss(self, questions: list[LabelledQuestion]) -> dict[str, torch.Tensor]:
        """The three auxiliary losses for the questions of the `answer_logits` call just made."""
        colour_labels, background_labels = zip(*(dense_labels(p) for q in questions for p in q.images))
        vision = self.seen["vision"]
        colour = self.colour(vision).reshape(-1, len(NAMES))
        losses = {"vision": -(torch.cat(colour_labels) * colour.log_softmax(-1)).sum(-1).mean()
                  + F.binary_cross_entropy_with_logits(self.background(vision).reshape(-1), torch.cat(background_labels))}
        hidden, ids = self.seen["hidden"], self.seen["ids"]
        change_logits, change_labels, target_logits, target_labels = [], [], [], []
        for row, q in enumerate(questions):
            if len(q.images) < 2:
                continue
            positions = (ids[row] == self.image_token_id).nonzero().squeeze(1)[self.tokens_per_image:]
            change_logits.append(self.change(hidden[row, positions]).squeeze(-1))
            change_labels.append(change_map(q.images[0], q.images[-1]))
            wanted = target_map(q)
            if wanted is not None:
                target_logits.append(self.target(hidden[row, -1]))
                target_labels.append(wanted)
        attribute_losses = []
        for row, q in enumerate(questions):
            labels = attribute_labels(q)
            for image, per_image in enumerate(labels or []):
                for name, label in per_image.items():
                    if label != -100:
                        logits = self.attributes[f"{image}_{name}"](hidden[row, -1])
                        attribute_losses.append(F.cross_entropy(logits[None], torch.tensor([label])))
        zero = hidden.sum() * 0
        losses["attributes"] = torch.stack(attribute_losses).mean() if attribute_losses else zero
        losses["change"] = F.binary_cross_entropy_with_logits(torch.cat(change_logits), torch.cat(change_labels)) \
            if change_logits else zero
        losses["target"] = F.binary_cross_entropy_with_logits(torch.stack(target_logits), torch.stack(target_labels)) \
            if target_logits else zero
        return losses
