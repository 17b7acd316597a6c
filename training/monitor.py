"""Training telemetry: tensorboard scalars, PNG edit grids, and loss curves as a picture."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.visualize import save_edit_grid, to_pil


class Monitor:
    def __init__(self, out_dir: Path, enabled: bool = True, resumed_at: int = 0):
        """Telemetry for a run that starts at step `resumed_at`: what an earlier process logged after that step (it
        was killed before its next checkpoint) is dropped, so a resumed run's log holds every step once."""
        self.out_dir, self.enabled, self.resumed_at = Path(out_dir), enabled, resumed_at
        self._writer = None
        metrics = self.out_dir / "metrics.jsonl"
        if enabled and metrics.exists():
            kept = [line for line in metrics.read_text().splitlines(keepends=True) if _logged_step(line) <= resumed_at]
            metrics.write_text("".join(kept))

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.resumed_at + 1)
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


def _logged_step(line: str) -> float:
    """The step of one metrics.jsonl line; a line cut off by a killed write counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


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
