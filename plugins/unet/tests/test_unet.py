"""The UNet plugin passes the host's conformance check; presets match their references."""

from __future__ import annotations

import pytest
import torch

from udiff import plugins
from udiff.context import Context
from udiff.testing import check_denoiser


def test_conformance():
    report = check_denoiser("unet")
    assert report["plugin"] == "udiff-unet" and report["preset"] == "tiny"
    assert report["loss_last"] < report["loss_first"]


def test_tiny_is_under_two_million_parameters():
    comp = plugins.get("denoiser", "unet")
    with torch.device("meta"):
        m = comp.build(comp.make_config("tiny"), Context(latent_channels=4, latent_size=8))
    assert sum(p.numel() for p in m.parameters()) < 2_000_000


def test_sd15_parameter_count_without_allocating():
    comp = plugins.get("denoiser", "unet")
    with torch.device("meta"):
        m = comp.build(comp.make_config("sd15"), Context(latent_channels=4, latent_size=64))
    assert all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == 859_520_964
    assert m.cond_dim == 768


def test_export_loads_with_from_pretrained(tmp_path, capsys):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    import udiff
    from udiff.cli import main

    run, out = tmp_path / "run", tmp_path / "export"
    assert main(["train", "--data", "digits", "--backbone", "unet", "--preset", "tiny",
                 "--autoencoder-steps", "5", "--max-steps", "3", "--batch-size", "8",
                 "--scheduler", "ddpm", "--out", str(run)]) == 0
    assert main(["export", str(run), "--format", "diffusers", "--scheduler", "ddim",
                 "--out", str(out)]) == 0
    pipe = udiff.load(run)
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    vae = AutoencoderKL.from_pretrained(out / "vae")
    sched = DDIMScheduler.from_pretrained(out / "scheduler")
    assert vae.config.scaling_factor == pytest.approx(pipe.scaling_factor)
    assert sched.config.timestep_spacing == "trailing" and sched.config.clip_sample is False
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    cond = pipe.conditioner(torch.tensor([1, 2]))
    with torch.no_grad():
        ours = pipe.denoiser(x, t, cond)
        theirs = unet(x, t, encoder_hidden_states=cond.tokens, class_labels=cond.pooled).sample
    torch.testing.assert_close(ours, theirs)
