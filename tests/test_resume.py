"""Training survives kills, Ctrl-C, a full disk and a second trainer, losing nothing."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from udiff.run.checkpoint_files import CheckpointFiles
from udiff.run.layout import MARKER
from udiff.run.lock import RunLock

# Long enough that kills land in both stages and in checkpoint writes (a checkpoint every 3 steps).
# --no-estimate: these tests count the trainer's steps (the probe would run a few first)
BASE = ["--data", "digits", "--backbone", "dit", "--preset", "tiny", "--batch-size", "16",
        "--no-estimate"]
ARGS = [*BASE, "--autoencoder-steps", "30", "--max-steps", "60", "--checkpoint-every", "3",
        "--keep-checkpoints", "2"]


def fails_mid_run(cli, *argv, match: str) -> str:
    """Exit 2, no traceback, and the error as the last stderr line (progress bars precede it)."""
    code, _, err = cli(*argv)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert lines[-1].startswith("udiff: error:") and match in lines[-1], lines[-1]
    return lines[-1]


def train_proc(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "udiff", "train", *ARGS, "--out", str(out),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("autoencoder", "denoiser", "conditioner"):
        for k, v in safetensors.torch.load_file(run / part / "model.safetensors").items():
            out[f"{part}.{k}"] = v
    return out


def assert_checkpoints_load(run: Path) -> None:
    for ckpt in CheckpointFiles(run).complete():
        for f in ckpt.glob("*.safetensors"):
            safetensors.torch.load_file(f)  # raises on a torn file
        for f in ckpt.glob("*.json"):
            json.loads(f.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = train_proc(out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return out


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(reference, tmp_path):
    out, rng = tmp_path / "run", random.Random(7)
    kills = 0
    for attempt in range(12):
        before = {p.name for p in CheckpointFiles(out).complete()}
        proc = train_proc(out, *(["--resume"] if attempt else []))
        if kills < 5:
            # Wait for this process to be training (a new checkpoint), then kill at random.
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and not (
                    {p.name for p in CheckpointFiles(out).complete()} - before):
                time.sleep(0.02)
            # A random moment within about two checkpoint periods: mid-step or mid-write. Short
            # enough that five kills always land before the run ends, on a fast machine too.
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT if kills == 2 else signal.SIGKILL)
                _, err = proc.communicate(timeout=120)
                if kills == 2 and proc.returncode != 0:  # Ctrl-C: checkpoint, then exit 130
                    assert proc.returncode == 130 and "continue with --resume" in err, err[-800:]
                kills += 1
                assert_checkpoints_load(out)
                if (out / "run.json").exists():  # the kill came after the run completed
                    break
                continue
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        break
    assert kills == 5 and (out / "run.json").exists()  # five kills, one of them Ctrl-C
    ours, ref = weights(out), weights(reference)
    assert ours.keys() == ref.keys()
    worst = max((ours[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= 1e-6, worst


def wait_for_checkpoint(out: Path, stage: str, proc: subprocess.Popen) -> None:
    """Until ``out`` holds a complete checkpoint of ``stage`` (the run is then mid-stage)."""
    deadline = time.time() + 300
    while not any(p.name.split("-")[1] == stage for p in CheckpointFiles(out).complete()):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint came"
        time.sleep(0.01)


def finish_and_compare(out: Path, reference: Path) -> str:
    """Resume to the end: the weights are bitwise the uninterrupted run's."""
    proc = train_proc(out, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    ours, ref = weights(out), weights(reference)
    assert ours.keys() == ref.keys()
    unequal = [k for k in ref if not torch.equal(ours[k], ref[k])]
    assert not unequal, unequal[:5]
    return err


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_stage_2_saves_exits_and_resumes_exactly(reference, tmp_path, sig, code):
    """Ctrl-C and a scheduler's SIGTERM alike: finish the step, checkpoint, exit 128 + signal."""
    out = tmp_path / "run"
    proc = train_proc(out)
    wait_for_checkpoint(out, "denoiser", proc)  # step 3 of 60: far from the end
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (proc.returncode, err[-800:])
    assert f"({sig.name})" in err
    assert "interrupted: checkpoint denoiser step" in err and "continue with --resume" in err
    assert not (out / "run.json").exists() and not (out / ".lock").exists()
    saved = CheckpointFiles(out).latest(warn=False)  # the step it was in, saved on the way out
    step = CheckpointFiles.state(saved)["step"]
    assert saved.name.split("-")[1] == "denoiser" and f"checkpoint denoiser step {step} saved" in err
    assert f"continuing from {saved.name}" in finish_and_compare(out, reference)


SIGTERM_AT_STEP_5 = """
import os, signal, sys
import udiff.training.step as step
real = step.DenoiserTraining.step
def stepped(self, *batch, **kw):  # SIGTERM during stage-2 step 5: between checkpoints 3 and 6
    loss = real(self, *batch, **kw)
    if self.steps == 5:
        os.kill(os.getpid(), signal.SIGTERM)
    return loss
step.DenoiserTraining.step = stepped
from udiff.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_checkpoint_that_cannot_fit_the_grace_period_is_not_started(tmp_path):
    """The signal is raised in-process between two regular checkpoints: sent from outside, it
    could land inside a regular write that had already started (which then completes)."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_AT_STEP_5, "train", *ARGS, "--out",
                           str(out), "--grace-seconds", "0.001"],  # less than any write takes
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 143, proc.stderr[-800:]
    err = proc.stderr
    assert "no checkpoint written" in err and "grace period" in err and "is kept" in err
    kept = CheckpointFiles(out).latest(warn=False)
    assert kept.name == "1-denoiser-000000003"  # the regular one before the signal
    assert_checkpoints_load(out)


@pytest.mark.slow
def test_kill_in_stage_1_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    proc = train_proc(out)
    wait_for_checkpoint(out, "autoencoder", proc)  # step 3 of 30
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert {p.name.split("-")[1] for p in CheckpointFiles(out).complete()} == {"autoencoder"}
    assert not (out / "autoencoder").exists()  # stage 1 had not ended
    assert "continuing from 0-autoencoder-" in finish_and_compare(out, reference)


KILL_IN_FSYNC = """
import os, signal, sys
import udiff.run.checkpoint_files as checkpoints
real, calls = checkpoints._fsync, [0]
def fsync(path):  # signalled at the 25th fsync: inside the third checkpoint's write
    calls[0] += 1
    if calls[0] == 25:
        for _ in range(SIGNALS):
            os.kill(os.getpid(), SIGNAL)
    real(path)
checkpoints._fsync = fsync
from udiff.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(reference, tmp_path):
    out = tmp_path / "run"
    script = KILL_IN_FSYNC.replace("SIGNALS", "1").replace("SIGNAL", "signal.SIGKILL")
    proc = subprocess.run([sys.executable, "-c", script, "train", *ARGS, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    torn = list((out / "checkpoints").glob(".tmp-*"))
    assert len(torn) == 1 and not (torn[0] / MARKER).exists()  # killed mid-write
    done = CheckpointFiles(out).complete()
    assert [p.name for p in done] == ["0-autoencoder-000000003", "0-autoencoder-000000006"]
    assert_checkpoints_load(out)
    finish_and_compare(out, reference)
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the torn write is cleaned up


@pytest.mark.slow
def test_two_sigterms_during_a_checkpoint_write_keep_the_previous_one(reference, tmp_path):
    """The second signal stops at once, in the middle of the write: the torn folder is never
    taken for a checkpoint."""
    out = tmp_path / "run"
    script = KILL_IN_FSYNC.replace("SIGNALS", "2").replace("SIGNAL", "signal.SIGTERM")
    proc = subprocess.run([sys.executable, "-c", script, "train", *ARGS, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert [p.name for p in CheckpointFiles(out).complete()] == [
        "0-autoencoder-000000003", "0-autoencoder-000000006"]
    assert_checkpoints_load(out)
    finish_and_compare(out, reference)


def test_incomplete_checkpoint_is_skipped_with_a_warning(reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "run.json").unlink()  # as if killed after the step-57 checkpoint: 3 steps to go
    ckpts = CheckpointFiles(out).complete()
    assert [c.name for c in ckpts] == ["1-denoiser-000000057", "1-denoiser-000000060"]
    shutil.rmtree(ckpts[-1])
    for part in ("denoiser", "conditioner"):
        shutil.rmtree(out / part)
    torn = out / "checkpoints" / "1-denoiser-999999999"
    torn.mkdir()
    (torn / "denoiser.safetensors").write_bytes(b"\0" * 10)
    err = finish_and_compare(out, reference)  # bitwise
    assert f"skipping incomplete checkpoint {torn}" in err
    assert "continuing from 1-denoiser-000000057" in err


def test_resume_with_nothing_to_resume_starts_over(cli, tmp_path):
    out = tmp_path / "fresh"
    code, _, err = cli("train", *BASE, "--max-steps", "2", "--autoencoder-steps", "2",
                       "--out", out, "--resume")
    assert code == 0, err
    assert "nothing to resume" in err and (out / "run.json").exists()
    cli.fails("train", *BASE, "--max-steps", "2", "--autoencoder-steps", "2", "--out", out,
              "--resume", match="already complete")


@pytest.mark.slow
def test_a_complete_run_trains_longer_as_if_started_with_more_steps(cli, tmp_path):
    short, longer = tmp_path / "short", tmp_path / "long"
    common = ["train", *BASE, "--autoencoder-steps", "4", "--checkpoint-every", "0"]
    assert cli(*common, "--max-steps", "10", "--out", short)[0] == 0
    assert json.loads((short / "run.json").read_text())["steps"]["denoiser"] == 10
    cli.fails(*common, "--max-steps", "10", "--out", short, "--resume", match="already complete")
    cli.fails(*common, "--max-steps", "16", "--lr", "3e-4", "--out", short, "--resume",
              match="training.lr")
    cli.fails(*common[:-4], "--autoencoder-steps", "6", "--checkpoint-every", "0",
              "--max-steps", "16", "--out", short, "--resume", match="--autoencoder-steps")
    code, _, err = cli(*common, "--max-steps", "16", "--out", short, "--resume")
    assert code == 0 and "denoiser steps 10 -> 16" in err, err[-2000:]
    assert json.loads((short / "run.json").read_text())["steps"]["denoiser"] == 16
    assert cli(*common, "--max-steps", "16", "--out", longer)[0] == 0
    ours, ref = weights(short), weights(longer)
    assert max((ours[k] - ref[k]).abs().max().item() for k in ref) <= 1e-6


def test_resume_with_another_config_is_refused(cli, reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "run.json").unlink()
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    cli.fails("train", *ARGS, "--lr", "0.5", "--out", out, "--resume",
              match="training.lr: 0.001 then, 0.5 now")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_second_trainer_on_the_same_out_is_refused(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        line = cli.fails("train", *ARGS, "--out", out, match="in use by another udiff train")
        assert f"pid {os.getpid()}" in line
    assert not (out / ".lock").exists() and not any(out.iterdir())


def test_full_disk_keeps_the_previous_checkpoint(cli, tmp_path, monkeypatch):
    import udiff.run.checkpoint_files

    calls = {"n": 0}
    real = udiff.run.checkpoint_files._fsync

    def fsync(path):
        calls["n"] += 1
        if calls["n"] > 40:  # after a few complete checkpoints
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(udiff.run.checkpoint_files, "_fsync", fsync)
    out = tmp_path / "run"
    line = fails_mid_run(cli, "train", *ARGS, "--out", out, match="no space left on device")
    assert "is intact" in line
    done = CheckpointFiles(out).complete()
    assert done and not list((out / "checkpoints").glob(".tmp-*"))
    assert_checkpoints_load(out)
    assert all((c / MARKER).exists() for c in done)


def test_nonfinite_losses_are_skipped_counted_and_bounded(cli, tmp_path, monkeypatch):
    import udiff.training.objective

    real = udiff.training.objective.objective_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] in (3, 4) or calls["n"] > 12 else loss

    monkeypatch.setattr(udiff.training.objective, "objective_loss", flaky)
    out = tmp_path / "run"
    line = fails_mid_run(cli, "train", *BASE, "--autoencoder-steps", "2", "--max-steps", "30",
                         "--checkpoint-every", "4", "--max-nonfinite", "5", "--out", out,
                         match="5 consecutive non-finite losses")
    assert "at step 10" in line  # steps 1-10 completed; calls 3 and 4 were skipped
    assert CheckpointFiles(out).latest(warn=False).name == "1-denoiser-000000008"


def test_skipped_nonfinite_steps_are_counted_in_the_log(cli, tmp_path, monkeypatch):
    import udiff.training.objective

    real, calls = udiff.training.objective.objective_loss, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        return real(*a, **k) * (float("nan") if calls["n"] in (3, 4, 7) else 1.0)

    monkeypatch.setattr(udiff.training.objective, "objective_loss", flaky)
    out = tmp_path / "run"
    code, _, err = cli("train", *BASE, "--autoencoder-steps", "2", "--max-steps", "10",
                       "--out", out)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["stage"] == "denoiser"][-1]
    assert (last["step"], last["skipped_nonfinite"]) == (10, 3) and calls["n"] == 13
