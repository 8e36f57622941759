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
