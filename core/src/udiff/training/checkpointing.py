"""Where a run starts (from scratch, or from its newest complete checkpoint), when it saves a
resumable checkpoint, and what Ctrl-C does (finish the step, save, exit 130)."""

from __future__ import annotations

import contextlib
import signal
import threading
import tomllib
from pathlib import Path

from accelerate import Accelerator

from ..config import TrainConfig, to_toml
from ..errors import UdiffError
from ..run.checkpoints import Checkpointer, set_rng_state, snapshot
from ..run.files import prepare_out
from ..run.layout import CONFIG, RUN_FILE
from .batches import Batches
from .setup import say

# May change on resume: they neither touch the weights nor draw from the training RNG
# (checkpoints hold whole tensors, so a sharded run resumes unsharded and back).
OPERATIONAL = ("checkpoint_every", "keep_checkpoints", "max_nonfinite", "validate_every",
               "validate_per_label", "log_with", "fsdp")


def config_difference(cfg: TrainConfig, saved_toml: Path) -> str | None:
    """The first field where ``cfg`` differs from a run's saved config.toml, if any."""
    try:
        old = tomllib.loads(saved_toml.read_text())
    except (OSError, ValueError) as e:
        raise UdiffError(f"--resume: cannot read {saved_toml}: {e}") from None
    new = tomllib.loads(to_toml(cfg))
    for d in (old, new):
        for key in OPERATIONAL:
            d.get("training", {}).pop(key, None)
    if old == new:
        return None
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                key = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[0]
                return f"{section}.{key}: {a.get(key)!r} then, {b.get(key)!r} now"
            return f"[{section}]"
    return None


class Checkpointing:
    def __init__(self, cfg: TrainConfig, out: Path, accelerator: Accelerator, resume: bool,
                 overwrite: bool) -> None:
        self.cfg, self.out, self.accelerator = cfg, out, accelerator
        self.resume, self.overwrite = resume, overwrite
        self.checkpointer = Checkpointer(out, cfg.training.keep_checkpoints)
        self.interrupted = False

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def prepare_out(self, overwrite: bool) -> None:
        """Every process checks --out before the main one clears it (no process sees it half
        cleared)."""
        prepare_out(self.out, overwrite, clear=False)
        self.accelerator.wait_for_everyone()
        if self.main:
            prepare_out(self.out, overwrite)
        self.accelerator.wait_for_everyone()

    def start(self) -> Path | None:
        """Prepare --out; with --resume, the checkpoint to continue from (None: from scratch)."""
        if not self.resume:
            self.prepare_out(self.overwrite)
            return None
        saved = self.out / CONFIG
        if (self.out / RUN_FILE).exists():
            raise UdiffError(f"--resume: the run in {self.out} is already complete")
        if not saved.exists():
            self.prepare_out(False)
            say(f"--resume: nothing to resume in {self.out}; starting the run from the beginning")
            return None
        differs = config_difference(self.cfg, saved)
        if differs:
            raise UdiffError(f"--resume: the run in {self.out} was started with another "
                             f"configuration ({differs}); resume with the same flags or config")
        latest = self.checkpointer.latest()
        if latest is None:
            say(f"--resume: no complete checkpoint in {self.out}; starting the run from the "
                "beginning")
        else:
            say(f"--resume: continuing from {latest.name}")
        return latest

    def due(self, step: int, last: int) -> bool:
        every = self.cfg.training.checkpoint_every
        return self.interrupted or (every > 0 and step % every == 0 and step < last)

    def save(self, stage: str, step: int, modules: dict, optimizer, lr_scheduler,
             batches: Batches, ema=None, extra: dict | None = None) -> None:
        files = snapshot(modules, optimizer, ema, keep=self.main)  # collective when sharded
        if self.main:
            self.checkpointer.save(stage, step, files, lr_scheduler, batches.position(), extra)
        self.accelerator.wait_for_everyone()
        if self.interrupted:
            say(f"interrupted: checkpoint {stage} step {step} saved; continue with --resume")
            raise KeyboardInterrupt

    def restore(self, checkpoint: Path, modules: dict, optimizer, lr_scheduler,
                batches: Batches, ema=None) -> dict:
        got = Checkpointer.load(checkpoint, modules, optimizer, lr_scheduler, ema)
        batches.restore(got["data"])
        set_rng_state(*got["rng"])
        return got["state"]

    @contextlib.contextmanager
    def catching_ctrl_c(self):
        """Ctrl-C sets a flag: the loop finishes its step and saves (a second Ctrl-C stops)."""
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if in_main_thread else None
        try:
            yield
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.interrupted = True
