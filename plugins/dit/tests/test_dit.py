"""DiT fidelity to the paper (counted on the meta device) and the host's conformance check."""

from __future__ import annotations

import pytest
import torch

from udiff import plugins
from udiff.config import TrainConfig
from udiff.evaluation.size import describe
from udiff.testing import check_denoiser
from udiff_dit.config import PRESETS

# facebookresearch/DiT, 256x256 images (32x32x4 latents), 1000 classes, learn_sigma.
OFFICIAL = {"S/2": 32_963_360, "B/2": 130_512_416, "L/2": 458_102_816, "XL/2": 675_129_632}


def info(preset: str) -> dict:
    cfg = TrainConfig(data={"image_size": 256, "channels": 3},
                      autoencoder={"name": "kl", "preset": "sd"},
                      denoiser={"name": "dit", "preset": preset})
    return describe(cfg, num_labels=1000)


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_official_parameter_counts(preset):
    got = info(preset)["params"]  # DiT + its label embedding table
    assert got == OFFICIAL[preset]  # exactly, as the README says


def test_xl2_macs_per_forward():
    macs = info("XL/2")["macs_per_forward"]
    assert round(macs / 1e9, 1) == 118.6, macs  # the README's figure (paper: 118.6 GFLOPs)


def test_counts_need_no_allocation():
    comp = plugins.get("denoiser", "dit")
    with torch.device("meta"):
        from udiff import Context

        m = comp.build(comp.make_config("XL/2"), Context(latent_channels=4, latent_size=32))
    assert all(p.is_meta for p in m.parameters())


def test_variant_table_is_complete():
    assert {f"{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)} <= set(PRESETS)


def test_adaln_zero_starts_as_identity():
    comp = plugins.get("denoiser", "dit")
    from udiff import Context

    m = comp.build(comp.make_config("tiny"), Context(latent_channels=4, latent_size=8))
    assert all(torch.count_nonzero(b.adaLN_modulation[-1].weight) == 0 for b in m.blocks)
    assert torch.count_nonzero(m.final_layer.linear.weight) == 0


def test_conformance():
    report = check_denoiser("dit")
    assert report["plugin"] == "udiff-dit" and report["loss_last"] < report["loss_first"]


def test_listed_by_udiff_plugins(capsys):
    import json

    from udiff.cli import main

    assert main(["plugins", "--json"]) == 0
    found = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert found["udiff-dit"]["provides"] == {"denoiser": ["dit"]}
    assert found["udiff-dit"]["error"] is None
