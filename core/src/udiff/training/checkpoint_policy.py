"""Where a run starts (from scratch, or from its newest complete checkpoint), when it saves a
resumable checkpoint, and what SIGINT/SIGTERM do: finish the step, save (if it fits in the grace
period), exit 130/143 -- every process at the same step."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import tomllib
from pathlib import Path

import torch
from accelerate import Accelerator

from ..config import TrainConfig, to_toml
from ..errors import UdiffError
from ..run.checkpoint_files import CheckpointFiles, set_rng_state, snapshot
from ..run.files import atomic_write, prepare_out, read_json
from ..run.layout import CONFIG, RUN_FILE
from .batches import Batches
from .launch import LAUNCHER_PID
from .setup import say

# May change on resume: they neither touch the weights nor draw from the training RNG
# (checkpoints hold whole tensors, so a sharded run resumes unsharded and back).
OPERATIONAL = ("checkpoint_every", "keep_checkpoints", "grace_seconds", "max_nonfinite",
               "validate_every", "validate_per_label", "log_with", "fsdp")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie -- dead, not yet reaped -- does not)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or no /proc: the kill probe says it exists
        return True


def refuse_stopped(out: Path) -> None:
    """--resume of a run early stopping ended is refused: the run is complete and its saved
    weights are the best validated ones, not the last step's, so there is nothing to train on
    from."""
    if not (out / RUN_FILE).exists():
        return
    stopped = read_json(out / RUN_FILE, f"run {out}").get("early_stop") or {}
    if stopped.get("stopped_early"):
        raise UdiffError(f"--resume: the run in {out} stopped early at step "
                         f"{stopped['stopped_at']} ({stopped['metric']} did not improve for "
                         f"{stopped['patience']} validations; it keeps step "
                         f"{stopped['best_step']}): it is complete. Train a new run, or "
                         "--overwrite it")


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal; the CLI exits with ``128 + signal`` (130, 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def config_difference(cfg: TrainConfig, saved_toml: Path | None,
                      text: str | None = None) -> str | None:
    """The first field where ``cfg`` differs from a run's saved config.toml (or ``text``)."""
    try:
        old = tomllib.loads(text if text is not None else saved_toml.read_text())
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


class CheckpointPolicy:
    def __init__(self, cfg: TrainConfig, out: Path, accelerator: Accelerator, resume: bool,
                 overwrite: bool) -> None:
        self.cfg, self.out, self.accelerator = cfg, out, accelerator
        self.resume, self.overwrite = resume, overwrite
        self.checkpointer = CheckpointFiles(out, cfg.training.keep_checkpoints)
        self.interrupted = 0  # the signal number once SIGINT/SIGTERM arrived (agreed by all)
        self.own_signal = 0  # the signal this process received itself
        self._parent: int | None = None
        self.signalled_at: float | None = None
        self.save_seconds = 0.0  # how long the last checkpoint took (the grace estimate)

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
        if not saved.exists():
            self.prepare_out(False)
            say(f"--resume: nothing to resume in {self.out}; starting the run from the beginning")
            return None
        differs = config_difference(self.cfg, saved)
        saved_steps = tomllib.loads(saved.read_text()).get("training", {}).get("max_steps")
        if (self.out / RUN_FILE).exists() and self.finished_steps() >= (saved_steps or 0):
            return self.extend(saved, differs)  # complete (else: a longer run, interrupted)
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

    def finished_steps(self) -> int:
        """The denoiser steps the run's run.json says it finished (older runs: its config's)."""
        run = read_json(self.out / RUN_FILE, f"run {self.out}")
        if "steps" in run:
            return run["steps"]["denoiser"]
        return tomllib.loads((self.out / CONFIG).read_text())["training"]["max_steps"]

    def extend(self, saved: Path, differs: str | None) -> Path:
        """Train a complete run longer: a larger --max-steps and nothing else different
        continues from the final checkpoint every run keeps, and ends as if it had been started
        with the larger number (the LR is constant after warm-up; data order, noise and EMA
        continue)."""
        done, wanted = self.finished_steps(), self.cfg.training.max_steps
        if differs is None or wanted <= done:
            raise UdiffError(f"--resume: the run in {self.out} is already complete ({done} "
                             "denoiser steps); a larger --max-steps trains it longer")
        old = TrainConfig.model_validate(tomllib.loads(saved.read_text()))
        if old.training.autoencoder_steps != self.cfg.training.autoencoder_steps:
            raise UdiffError("--resume: --autoencoder-steps cannot grow on a complete run: its "
                             "denoiser learnt the latents of the autoencoder it has; start a new "
                             f"run with --autoencoder {self.out} and more --max-steps")
        longer = old.model_copy(deep=True)
        longer.training.max_steps = wanted
        rest = config_difference(self.cfg, None, to_toml(longer))
        if rest:
            raise UdiffError(f"--resume: a complete run can only be trained longer (a larger "
                             f"--max-steps); this differs too: {rest}")
        final = self.checkpointer.latest()
        state = CheckpointFiles.state(final) if final else {}
        if state.get("stage") != "denoiser" or state.get("step") != done:
            raise UdiffError(f"--resume: the run in {self.out} kept no final checkpoint "
                             f"(trained before udiff kept one); train a new run instead")
        if self.main:
            atomic_write(saved, lambda p: p.write_text(to_toml(self.cfg)))
        self.accelerator.wait_for_everyone()
        say(f"--resume: training the complete run longer: denoiser steps {done} -> {wanted}, "
            f"from {final.name}")
        return final

    def due(self, step: int, last: int, final: bool = False) -> bool:
        """After every optimizer step: a checkpoint now? With several processes they first agree
        on whether a signal arrived (one all-reduce), so that all stop at the same step.
        ``final``: also at the last step (stage 2 keeps its final state: a run can be trained
        longer)."""
        several = self.accelerator.num_processes > 1
        if (several or os.environ.get(LAUNCHER_PID)) and not self.interrupted and self.orphaned():
            say("the launching process is gone: stopping as on SIGTERM")
            self.interrupted, self.signalled_at = int(signal.SIGTERM), time.monotonic()
        if several:
            flag = torch.tensor([self.interrupted], device=self.accelerator.device)
            self.interrupted = int(self.accelerator.reduce(flag, "max").item())
            if self.interrupted and self.signalled_at is None:
                self.signalled_at = time.monotonic()  # a peer got it: the grace from here
        every = self.cfg.training.checkpoint_every
        return bool(self.interrupted) or (final and step == last) or (
            every > 0 and step % every == 0 and step < last)

    def save(self, stage: str, step: int, modules: dict, optimizer, lr_scheduler,
             batches: Batches, ema=None, extra: dict | None = None) -> None:
        if self.interrupted:
            self.within_grace(stage, step)
        start = time.monotonic()
        files = snapshot(modules, optimizer, ema, keep=self.main)  # collective when sharded
        if self.main:
            self.checkpointer.save(stage, step, files, lr_scheduler, batches.position(), extra)
        self.accelerator.wait_for_everyone()
        self.save_seconds = time.monotonic() - start
        if self.interrupted:
            say(f"interrupted: checkpoint {stage} step {step} saved "
                f"({signal.Signals(self.interrupted).name}); continue with --resume (the same "
                "command)")
            raise Interrupted(self.interrupted)

    def within_grace(self, stage: str, step: int) -> None:
        """Raise (keeping the last checkpoint) if writing one now would outlast the grace
        period: the scheduler's SIGKILL would cut it anyway, so do not start it."""
        grace = self.cfg.training.grace_seconds
        left = grace - (time.monotonic() - (self.signalled_at or time.monotonic()))
        need = self.save_seconds  # the last checkpoint's time; none yet: try (writes are atomic)
        if need <= left:
            return
        latest = self.checkpointer.latest()
        kept = f"the last checkpoint ({latest.name}) is kept" if latest else "there is none yet"
        say(f"interrupted ({signal.Signals(self.interrupted).name}) at {stage} step {step}: no "
            f"checkpoint written -- it needs ~{need:.0f} s and {max(left, 0):.0f} s of the "
            f"{grace:.0f} s grace period are left; {kept}; continue with --resume")
        raise Interrupted(self.interrupted)

    def restore(self, checkpoint: Path, modules: dict, optimizer, lr_scheduler,
                batches: Batches, ema=None) -> dict:
        got = CheckpointFiles.load(checkpoint, modules, optimizer, lr_scheduler, ema)
        batches.restore(got["data"])
        set_rng_state(*got["rng"])
        return got["state"]

    @contextlib.contextmanager
    def catching_signals(self):
        """SIGINT and SIGTERM set a flag: the loop finishes its step and saves (a second signal
        stops at once)."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def orphaned(self) -> bool:
        """A worker whose parent (accelerate/torchrun) or ``udiff`` launcher is gone: it stops
        as on SIGTERM, so that no orphan keeps the lock or writes to --out. Checked every step
        (a syscall or two; a watchdog thread made the gloo workers abort at exit)."""
        if self._parent is None:
            self._parent = os.getppid()
        launcher = int(os.environ.get(LAUNCHER_PID) or 0)
        return os.getppid() != self._parent or bool(launcher and not alive(launcher))

    def _on_signal(self, signum, frame) -> None:
        if self.own_signal:  # a second signal to this process: stop now
            raise Interrupted(signum)
        self.own_signal = signum  # (a peer's, agreed in due(), does not count as a first)
        self.interrupted = self.interrupted or signum
        self.signalled_at = self.signalled_at or time.monotonic()
