"""A model's training run under a wall-time budget that a killed or finished process continues where it stopped."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


class BudgetedRun:
    """Step counter, time spent, quality curve and RNG states of a run, saved atomically with its modules and
    optimizer every minute, at the end and whenever `save` is called; a new run on the same state file resumes them.
    `minutes` and `max_steps` are the run's whole budget, counted over every process that ran it, as the annealed rate
    counts it: a killed run resumed trains what is left, a finished one rerun trains nothing unless given more (its
    rate then picks the schedule up where the longer budget puts it). With `identity` (the settings that make a run
    this run), a state saved under another identity is refused; with no `state_path`, nothing is saved or resumed."""

    def __init__(self, state_path: Path | None, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                 rng: random.Random, *, minutes: float = math.inf, max_steps: int | None = None,
                 eval_every_s: float = 600, desc: str = "train", progress: bool = True, identity: dict | None = None):
        self.state_path = None if state_path is None else Path(state_path)
        self.modules, self.optimizer, self.rng, self.identity = modules, optimizer, rng, identity
        self.minutes, self.max_steps, self.eval_every_s = minutes, max_steps, eval_every_s
        self.step, self.spent_s, self.history, self.losses = 0, 0.0, [], []
        if self.state_path is not None and self.state_path.exists():
            self._resume(torch.load(self.state_path, map_location="cpu", weights_only=False))
        self.start = self.last_save = self.last_eval = time.monotonic()
        self.bar = tqdm(total=round(minutes * 60) if math.isfinite(minutes) else None, initial=round(self.spent_s),
                        unit="s", desc=desc, disable=not progress)

    def _resume(self, state: dict) -> None:
        if self.identity is not None and state.get("identity") != self.identity:
            raise ValueError(f"{self.state_path} is another run's state ({state.get('identity')}, not "
                             f"{self.identity}): continue it with the settings it started with, or start in another "
                             "folder")
        for name, module in self.modules.items():
            try:
                module.load_state_dict(state[name])
            except RuntimeError:
                raise ValueError(f"{self.state_path} resumes another {name} (its shapes differ): continue it "
                                 "with the settings it started with, or start in another folder") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.spent_s, self.history = state["step"], state["spent_s"], state["history"]
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])

    def running(self) -> bool:
        """Whether the budget has time and steps left, counting those spent before a resume."""
        return self.total_minutes() < self.minutes and (self.max_steps is None or self.step < self.max_steps)

    def total_minutes(self) -> float:
        return (self.spent_s + time.monotonic() - self.start) / 60

    def rate(self, lr: float, *, anneal: bool, warmup_steps: int = 100) -> float:
        """`lr` warmed up linearly over `warmup_steps`, then constant or, with `anneal`, cosine to zero at the end of
        the budget (of minutes, or of steps when that ends first)."""
        done = max(self.total_minutes() / self.minutes, self.step / self.max_steps if self.max_steps else 0.0)
        return lr * min(1.0, (self.step + 1) / warmup_steps) * (
            0.5 * (1 + math.cos(math.pi * min(done, 1.0))) if anneal else 1.0)

    def after_step(self, loss: float, evaluate: Callable[[], dict]) -> None:
        """Count the step; evaluate and save on their cadences."""
        self.step += 1
        self.losses.append(loss)
        now = time.monotonic()
        self.bar.n = round(self.spent_s + now - self.start)
        self.bar.set_postfix(step=self.step, loss=f"{np.mean(self.losses[-20:]):.4f}")
        if now - self.last_eval > self.eval_every_s:
            self.history.append({"step": self.step, "minutes": self.total_minutes(), **evaluate()})
            self.bar.write(json.dumps(self.history[-1]))
            self.last_eval = time.monotonic()
        if now - self.last_save > 60:
            self.save()
            self.last_save = now

    def save(self) -> None:
        """Write the run's state atomically (nothing without a state path)."""
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        state = {name: module.state_dict() for name, module in self.modules.items()}
        state.update(optimizer=self.optimizer.state_dict(), step=self.step, spent_s=self.spent_s + time.monotonic()
                     - self.start, history=self.history, rng=self.rng.getstate(), torch_rng=torch.get_rng_state(),
                     identity=self.identity)
        torch.save(state, self.state_path.with_suffix(".tmp"))
        self.state_path.with_suffix(".tmp").replace(self.state_path)

    def finish(self) -> dict:
        """Save; the run's facts for a manifest."""
        self.bar.close()
        self.save()
        return {"steps": self.step, "train_minutes": round(self.total_minutes(), 2), "curve": self.history,
                "loss_this_run": {"steps": len(self.losses),
                                  "first_10": float(np.mean(self.losses[:10])) if self.losses else None,
                                  "last_10": float(np.mean(self.losses[-10:])) if self.losses else None}}
