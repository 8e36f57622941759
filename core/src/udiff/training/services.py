"""What a stage may use from the run it belongs to, as one typed object (Lightning hands each
hook its trainer; udiff hands each stage only these): the config, the run folder, accelerate,
the JSONL log, progress bars and the checkpointing policy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..run.layout import LOG
from .checkpoint_policy import CheckpointPolicy


@dataclass
class Services:
    cfg: TrainConfig
    out: Path
    accelerator: Accelerator
    checkpointing: CheckpointPolicy
    progress: bool = True

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, **row) -> None:
        """One JSONL row; with a tracker, its numbers too (as ``stage/key`` at the row's step)."""
        if self.main:
            with open(self.out / LOG, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.cfg.training.log_with != "none":
            self.accelerator.log({f"{row['stage']}/{k}": v for k, v in row.items()
                                  if k not in ("stage", "step") and type(v) in (int, float)},
                                 step=row["step"])

    def bar(self, total: int, desc: str, initial: int = 0):
        return tqdm(total=total, initial=initial, desc=desc,
                    disable=not (self.progress and self.main))
