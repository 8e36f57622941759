"""CUDA paths: exercised when a GPU exists, skipped with the reason when not."""

from __future__ import annotations

import pytest
import torch

import udiff
from conftest import TINY

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@needs_cuda
def test_train_and_sample_on_cuda_bf16(cli, tmp_path):
    out = tmp_path / "cuda"
    code, _, err = cli("train", "--data", "digits", "--backbone", "unet", *TINY, "--device", "cuda",
                       "--mixed-precision", "bf16", "--out", out)
    assert code == 0, err
    pipe = udiff.load(out, device="cuda")
    images, _ = pipe.sample_tensor([0, 1], per_label=2, steps=4)
    assert torch.isfinite(images).all()


def test_cuda_request_without_gpu_is_one_line(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    cli.fails("train", "--data", "digits", "--backbone", "unet", *TINY, "--device", "cuda",
              "--out", tmp_path / "r", match="no CUDA device")


@needs_cuda
def test_fsdp_on_gpus(cli, tmp_path):
    """accelerate's own FSDP path (no gate lifted): a process per GPU present (a single GPU is
    one MULTI_GPU process, which accelerate also turns FSDP)."""
    import json

    from conftest import run_udiff

    gpus = torch.cuda.device_count()
    out = tmp_path / "fsdp"
    proc = run_udiff("train", "--data", "digits", "--backbone", "flux", *TINY, "--device", "cuda",
                     "--mixed-precision", "bf16", "--batch-size", str(16 * gpus),
                     "--num-processes", str(gpus), "--fsdp", "--checkpoint-every", "10",
                     "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert (run["processes"], run["distributed_type"]) == (gpus, "FSDP")
    pipe = udiff.load(out, device="cuda")
    images, _ = pipe.sample_tensor([0, 1], per_label=2, steps=4)
    assert torch.isfinite(images).all()
