"""Data-parallel training through accelerate on CPU (gloo): N processes x batch B/N reach the
weights of one process x batch B, and a checkpoint of N processes resumes on one."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from conftest import run_udiff
from udiff.launch import child_argv, command

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
        "0-autoencoder-000000003", "1-denoiser-000000003"]

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
    for part in ("denoiser", "conditioner"):
        shutil.rmtree(resumed / part)
    proc = run_udiff(*BASE, "--autoencoder-steps", "6", "--resume", "--out", resumed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "continuing from 1-denoiser-000000003" in proc.stderr
    assert max_difference(weights(resumed), weights(two)) <= 1e-5


def test_batch_must_split_evenly_one_line(tmp_path):
    proc = run_udiff(*BASE, "--batch-size", "15", "--num-processes", "2", "--out", tmp_path / "x")
    assert proc.returncode == 2 and "multiple of the 2 processes" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
