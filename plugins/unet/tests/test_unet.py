"""The UNet plugin passes the host's conformance check; presets match their references."""

from __future__ import annotations

import torch

from udiff import plugins
from udiff.components import Context
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
