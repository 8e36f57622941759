"""Early stopping on a validation metric, and the best validated weights the run keeps.

The best state (the EMA weights at the best validation) is written to ``best.safetensors`` in the
run folder when it improves, so a preempted run resumes with it; the counters travel in every
checkpoint's state. At the end of stage 2 the run's denoiser and conditioner are the best state."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from ..run.files import atomic_write
from ..run.layout import BEST
from .setup import say

# metric -> (validation row key, +1 when lower is better, -1 when higher is)
METRICS = {"fid": ("fid", 1), "loss": ("loss", 1), "accuracy": ("label_accuracy", -1)}


class EarlyStopping:
    def __init__(self, metric: str, patience: int, out: Path, main: bool) -> None:
        self.metric, self.patience, self.out, self.main = metric, patience, out, main
        self.key, self.sign = METRICS[metric]
        self.best: float | None = None
        self.best_step: int | None = None
        self.stale = 0  # validations since the best
        self.stopped_at: int | None = None

    def update(self, row: dict, step: int, weights: list[torch.Tensor]) -> bool:
        """Record one validation (main process); ``weights``: the validated (EMA) state, in the
        trainer's parameter order. -> True when the metric has not improved for ``patience``."""
        value = float(row[self.key])
        if self.best is None or self.sign * value < self.sign * self.best:
            self.best, self.best_step, self.stale = value, step, 0
            tensors = {str(i): w.detach().to("cpu", torch.float32).contiguous()
                       for i, w in enumerate(weights)}
            if self.main:
                atomic_write(self.out / BEST,
                             lambda p: safetensors.torch.save_file(tensors, str(p)))
            return False
        self.stale += 1
        return self.stale >= self.patience

    def stop(self, step: int) -> None:
        self.stopped_at = step
        say(f"early stop at step {step}: validation {self.metric} has not improved for "
            f"{self.patience} validation(s); best {self.best:.4g} at step {self.best_step}")

    def restore_best(self, params: list[torch.nn.Parameter]) -> None:
        """Put the best validated state into ``params`` (what the run saves)."""
        if self.best_step is None:
            return
        best = safetensors.torch.load_file(str(self.out / BEST))
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(best[str(i)].to(p.dtype))

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale}

    def load_state(self, state: dict | None) -> None:
        if state:
            self.best, self.best_step, self.stale = state["best"], state["best_step"], state["stale"]

    def summary(self) -> dict:
        """``run.json``'s ``early_stop``: which step was kept, on which metric, at what value."""
        return {"metric": self.metric, "patience": self.patience, "best_step": self.best_step,
                "best_value": self.best, "stopped_at": self.stopped_at,
                "stopped_early": self.stopped_at is not None}
