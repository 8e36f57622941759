"""Data-parallel training through accelerate on CPU (gloo): N processes x batch B/N reach the
weights of one process x batch B, and a checkpoint of N processes resumes on one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import run_udiff
from udiff.training.launch import child_argv, command

STEPS = ["--max-steps", "6", "--checkpoint-every", "3", "--batch-size", "16", "--lr", "2e-3"]
BASE = ["train", "--data", "digits", "--backbone", "unet", "--preset", "tiny", *STEPS]


def weights(run, part="denoiser"):
    return load_file(str(run / part / "model.safetensors"))


def max_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_launcher_command_is_accelerate_launch():
    argv = ["train", "--num-processes", "2", "--data", "digits", "--out", "x"]
    assert child_argv(argv) == ["train", "--data", "digits", "--out", "x"]
    assert child_argv(["train", "--num-processes=3", "--out", "x"]) == ["train", "--out", "x"]
    cmd = command(argv, 2, "no")
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("-m", 3):] == ["-m", "udiff", "train", "--data", "digits", "--out", "x"]
    assert cmd[cmd.index("--mixed_precision") + 1] == "no"


@pytest.mark.slow
@pytest.mark.acceptance  # three multi-process runs: after the suite (.ci/run)
def test_two_processes_match_one_and_resume_on_one(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    proc = run_udiff(*BASE, "--autoencoder-steps", "6", "--num-processes", "2", "--out", two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained run written") == 1  # the main process speaks
    run = json.loads((two / "run.json").read_text())
    assert run["processes"] == 2  # really two processes (accelerate: MULTI_CPU on gloo)
    # Stage 1 ran in both processes; its latent cache was written once and read by the other.
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
        "1-denoiser-000000003", "1-denoiser-000000006"]  # every run keeps its final state

    # One process, batch 16, the same autoencoder (so the same latents), the same seed.
    proc = run_udiff(*BASE, "--autoencoder", two, "--out", one)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((one / "run.json").read_text())["processes"] == 1
    for part in ("denoiser", "conditioner"):
        assert max_difference(weights(two, part), weights(one, part)) <= 1e-5, part

    # The 2-process run's step-3 checkpoint, resumed by one process, ends where it ended.
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    (resumed / "run.json").unlink()  # as if it had been stopped after the checkpoint
    shutil.rmtree(resumed / "checkpoints" / "1-denoiser-000000006")
    for part in ("denoiser", "conditioner"):
        shutil.rmtree(resumed / part)
    proc = run_udiff(*BASE, "--autoencoder-steps", "6", "--resume", "--out", resumed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "continuing from 1-denoiser-000000003" in proc.stderr
    for part in ("denoiser", "conditioner"):  # both trained modules, not the denoiser alone
        assert max_difference(weights(resumed, part), weights(two, part)) <= 1e-5, part


def test_batch_must_split_evenly_one_line(tmp_path):
    proc = run_udiff(*BASE, "--batch-size", "15", "--num-processes", "2", "--out", tmp_path / "x")
    assert proc.returncode == 2 and "multiple of the 2 processes" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


# -- FSDP ------------------------------------------------------------------------------------
FSDP_LAUNCHER = Path(__file__).with_name("fsdp_on_cpu.py")


def run_fsdp_on_cpu(*args, processes: int = 2):
    """``udiff <args>`` in ``processes`` gloo processes with accelerate's FSDP plugin (its CPU
    gate lifted: see fsdp_on_cpu.py)."""
    cmd = command(["train"], processes, "no")
    cmd = [*cmd[: cmd.index("-m", 3)], str(FSDP_LAUNCHER), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_fsdp_is_refused_on_cpu_in_one_line(tmp_path):
    """What a user gets from accelerate on CPU: no FSDP, so one line, not a silent DDP run."""
    for extra in ([], ["--num-processes", "2"]):
        proc = run_udiff(*BASE, "--fsdp", *extra, "--out", tmp_path / "x")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "--fsdp: accelerate shards a model only in a distributed GPU run" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_fsdp_units_are_the_blocks_present():
    from udiff import plugins
    from udiff.context import Context
    from udiff.weights.sharding import units

    ctx = Context(image_channels=1, image_size=8, num_labels=10, latent_channels=4, latent_size=4)
    def build(role, name):
        comp = plugins.get(role, name)
        return comp.build(comp.make_config("tiny"), ctx)

    ae, dit, unet = build("autoencoder", "kl"), build("denoiser", "dit"), build("denoiser", "unet")
    assert units(dit) == ["DiTBlock"]
    assert "ResnetBlock2D" in units(unet) and "ResnetBlock2D" in units(ae)
    # diffusers' lists name blocks a small configuration never builds: they are left out
    assert "BasicTransformerBlock" not in units(ae)


@pytest.mark.slow
@pytest.mark.acceptance  # three 2-process runs: after the suite (.ci/run)
def test_fsdp_two_processes_match_one_and_resume(tmp_path):
    sharded, one = tmp_path / "fsdp", tmp_path / "one"
    # Validation samples from the sharded modules in lock-step (and must not move the weights).
    proc = run_fsdp_on_cpu(*BASE, "--autoencoder-steps", "6", "--fsdp", "--validate-every", "3",
                           "--out", sharded)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((sharded / "run.json").read_text())
    assert (run["processes"], run["distributed_type"]) == (2, "FSDP")
    assert sorted(p.name for p in (sharded / "validation").iterdir()) == [
        "step-000003.png", "step-000006.png"]
    # Checkpoints hold whole tensors (gathered from the shards), loadable without FSDP.
    ckpt = sharded / "checkpoints" / "1-denoiser-000000003"
    whole = load_file(str(ckpt / "denoiser.safetensors"))
    assert whole.keys() == weights(sharded).keys()
    assert all(whole[k].shape == v.shape for k, v in weights(sharded).items())

    proc = run_udiff(*BASE, "--autoencoder", sharded, "--out", one)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in ("denoiser", "conditioner"):
        assert max_difference(weights(sharded, part), weights(one, part)) <= 1e-5, part

    # The step-3 checkpoint resumes sharded (scattered back into shards) and on one process.
    for name, launch_it in (("sharded", run_fsdp_on_cpu), ("unsharded", run_udiff)):
        resumed = tmp_path / name
        shutil.copytree(sharded, resumed)
        (resumed / "run.json").unlink()
        shutil.rmtree(resumed / "checkpoints" / "1-denoiser-000000006")
        for part in ("denoiser", "conditioner"):
            shutil.rmtree(resumed / part)
        flags = ["--fsdp"] if name == "sharded" else []
        proc = launch_it(*BASE, "--autoencoder-steps", "6", *flags, "--resume", "--out", resumed)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "continuing from 1-denoiser-000000003" in proc.stderr
        for part in ("denoiser", "conditioner"):
            assert max_difference(weights(resumed, part), weights(sharded, part)) <= 1e-5, name


LONG = [*BASE[:-len(STEPS)], "--max-steps", "60", "--checkpoint-every", "3", "--batch-size", "16",
        "--lr", "2e-3", "--autoencoder-steps", "6"]


def launcher(out: Path, *extra: str, by_hand: bool = False) -> subprocess.Popen:
    """``udiff train --num-processes 2`` as a scheduler starts it (its own process group), or
    (``by_hand``) the ``accelerate launch`` command a user would type instead."""
    argv = [*LONG, "--out", str(out), *extra]
    cmd = (command(argv, 2, "no") if by_hand else
           [sys.executable, "-m", "udiff", *argv, "--num-processes", "2"])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def processes_writing(out: Path) -> list[int]:
    """Pids whose command line names ``out`` (the launcher, accelerate, the workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out) in (proc / "cmdline").read_text():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def newest_step(out: Path) -> int:
    from udiff.run.checkpoint_files import CheckpointFiles

    return CheckpointFiles.state(CheckpointFiles(out).latest(warn=False))["step"]


def first_denoiser_checkpoint(out: Path, proc: subprocess.Popen) -> int:
    """Wait for stage 2's first checkpoint; the newest step saved so far."""
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("*-denoiser-*/COMPLETE")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint came"
        time.sleep(0.05)
    return newest_step(out)


def saved_on_the_way_out(out: Path, err: str, before: int, sig: str) -> int:
    """The workers wrote a checkpoint newer than the one seen before the signal (the one the
    signal made: its line names it), and no process of the run is left; the lock is free."""
    from udiff.run.lock import RunLock

    step = newest_step(out)
    assert before < step < 60 and not (out / "run.json").exists(), (before, step)
    assert f"checkpoint denoiser step {step} saved ({sig}); continue with --resume" in err, \
        err[-3000:]
    deadline = time.monotonic() + 60
    while processes_writing(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_writing(out) == []
    with RunLock(out):  # free
        pass
    return step


def interrupted(out: Path, send, **launch) -> tuple[subprocess.Popen, str, int]:
    """Start a 2-process run, wait for stage 2's first checkpoint, ``send(proc)`` a signal; the
    finished process, its stderr and the newest step saved before the signal."""
    proc = launcher(out, **launch)
    before = first_denoiser_checkpoint(out, proc)
    # Past that checkpoint: the next one is being written or done. A signal then makes a new one
    # (sent at once, it could land just after that write, which would then count as its own).
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob(".tmp-*")) and newest_step(out) <= before:
        assert proc.poll() is None and time.monotonic() < deadline, "no second checkpoint"
        time.sleep(0.002)
    send(proc)
    _, err = proc.communicate(timeout=300)  # until the workers close the pipe
    return proc, err, before


@pytest.fixture(scope="module")
def reference_2p(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two") / "reference"
    proc = launcher(out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.acceptance  # 2-process runs: after the suite (.ci/run)
def test_sigterm_to_the_launcher_checkpoints_and_resumes_exactly(reference_2p, tmp_path):
    """SIGTERM to the launcher's pid only: both workers checkpoint the same step, exit 143."""
    out = tmp_path / "term"
    proc, err, before = interrupted(out, lambda p: os.kill(p.pid, signal.SIGTERM))
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM forwarded" in err
    step = saved_on_the_way_out(out, err, before, "SIGTERM")
    proc = launcher(out, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and f"-denoiser-{step:09d}" in err, err[-3000:]
    for part in ("denoiser", "conditioner"):
        assert max_difference(weights(out, part), weights(reference_2p, part)) == 0, part


@pytest.mark.slow
@pytest.mark.acceptance
def test_ctrl_c_in_a_terminal_reaches_the_workers_once(tmp_path):
    """A terminal sends SIGINT to its foreground process group: the launcher's. The workers, in
    accelerate's own session, get it once (forwarded): a checkpoint, not 'stop at once'."""
    out = tmp_path / "int"
    proc, err, before = interrupted(out, lambda p: os.killpg(p.pid, signal.SIGINT))
    assert proc.returncode == 130, err[-3000:]
    assert err.count("SIGINT forwarded") == 1
    saved_on_the_way_out(out, err, before, "SIGINT")


@pytest.mark.slow
@pytest.mark.acceptance
def test_sigkill_of_the_launcher_checkpoints_and_resumes(reference_2p, tmp_path):
    """The workers see their launcher gone, checkpoint, exit; the run resumes (on one process)
    to the uninterrupted 2-process run's weights."""
    out = tmp_path / "kill"
    proc, err, before = interrupted(out, lambda p: os.kill(p.pid, signal.SIGKILL))
    assert "the launching process is gone" in err
    step = saved_on_the_way_out(out, err, before, "SIGTERM")
    proc = subprocess.run([sys.executable, "-m", "udiff", *LONG, "--resume", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"continuing from 1-denoiser-{step:09d}" in proc.stderr
    for part in ("denoiser", "conditioner"):
        assert max_difference(weights(out, part), weights(reference_2p, part)) <= 1e-5, part


@pytest.mark.slow
@pytest.mark.acceptance
def test_sigkill_of_the_agent_checkpoints_and_the_launcher_says_so(tmp_path):
    """SIGKILL of ``accelerate launch`` (torch's elastic agent) under ``udiff``: the workers see
    their parent gone and checkpoint; ``udiff`` exits 2 in one line naming the failure."""
    out = tmp_path / "agent"

    def kill_the_agent(proc):
        agents = [pid for pid in processes_writing(out) if "accelerate.commands.launch" in
                  Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(agents) == 1
        os.kill(agents[0], signal.SIGKILL)

    proc, err, before = interrupted(out, kill_the_agent)
    assert proc.returncode == 2, err[-3000:]
    # Its line comes at once; the workers' lines (their checkpoint) follow it.
    assert "udiff: error: training in 2 processes failed (exit -9" in err
    saved_on_the_way_out(out, err, before, "SIGTERM")


@pytest.mark.slow
@pytest.mark.acceptance
def test_sigterm_to_accelerate_launch_started_by_hand(tmp_path):
    """The same without the ``udiff`` launcher: accelerate's agent passes SIGTERM on."""
    out = tmp_path / "hand"
    proc, err, before = interrupted(out, lambda p: os.kill(p.pid, signal.SIGTERM), by_hand=True)
    assert proc.returncode != 0, err[-3000:]
    saved_on_the_way_out(out, err, before, "SIGTERM")
