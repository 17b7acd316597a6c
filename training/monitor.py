"""Training telemetry: tensorboard scalars, PNG edit grids, and loss curves as a picture."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.visualize import save_edit_grid, to_pil


class Monitor:
    def __init__(self, out_dir: Path, enabled: bool = True):
        self.out_dir, self.enabled = Path(out_dir), enabled
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        return self._writer

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def edit_grid(self, step: int, batch, images: torch.Tensor) -> Path | None:
        if not self.enabled:
            return None
        return save_edit_grid([to_pil(r) for r in batch.references], batch.instructions,
                              [to_pil(i) for i in images], self.out_dir / "images" / f"step-{step:07d}.png", cell=128)

    def close(self, history: list[dict[str, float]]) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.enabled and history:
            plot_loss_curves(history, self.out_dir / "loss_curves.png")


def plot_loss_curves(history: list[dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for row in history for k in row if k.startswith(("loss/", "fake/flow", "vlm/p_correct"))})
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 1.8 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        points = [(row["step"], row[key]) for row in history if key in row]
        ax.plot([p[0] for p in points], [p[1] for p in points])
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
