"""The README's main command, end to end, against the issue's quality targets."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import run_udiff
from udiff import plugins


@pytest.mark.slow
@pytest.mark.parametrize("backbone", [
    # ~3 min each, so after the suite (.ci/run): the suite's 15 minutes hold the rest
    pytest.param("unet", marks=pytest.mark.acceptance),  # the README's command
    pytest.param("dit", marks=pytest.mark.acceptance),
    pytest.param("flux", marks=pytest.mark.acceptance),
])
def test_demo_meets_target(demo, backbone):
    if backbone not in plugins.registry().components["denoiser"]:
        pytest.skip(f"udiff-{backbone} is not installed")
    proc, out = demo(backbone)  # the UNet's is also the distillation test's teacher
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"backbone", "label_accuracy", "reference_accuracy", "wall_seconds"} <= set(metrics)
    assert metrics["backbone"] == backbone
    assert metrics["reference_accuracy"] >= 0.95, metrics
    assert metrics["label_accuracy"] >= 0.95, metrics  # issue 7's target for every backbone
    assert metrics["fid_features"] == "reference_classifier"  # no Inception weights offline
    assert metrics["fid_real_vs_real"] < metrics["fid"] and metrics["kid_real_vs_real"] < metrics["kid"]
    assert metrics["autoencoder"]["held_out"] and metrics["autoencoder"]["psnr"] > 30, metrics
    # Issue 19: one objective for every backbone, close to the data, and no near-copies.
    assert metrics["demo"]["objective"] == "flow" and metrics["trained_with"] == "flow"
    assert metrics["settings"]["guidance"] == 2 and metrics["settings"]["guidance_interval"] == [
        0.2, 0.8]  # chosen from the guidance sweep
    assert metrics["fid"] <= 30, metrics
    for space in ("features", "pixels"):
        assert metrics["memorization"][space]["near_copy_share"] <= 0.05, metrics["memorization"]
    # Not one sample per label (feature-space diversity; measured 0.61 DiT, 0.81 Flux, 0.96 UNet).
    assert metrics["diversity"] >= 0.5 * metrics["real_diversity"], metrics
    for picture in ("samples.png", "metrics.png"):
        with Image.open(out / picture) as im:
            assert im.height > 9 * 16  # a row per label
    # A second demo into the same folder must not clobber it.
    again = run_udiff("demo", "--backbone", backbone, "--out", out)
    assert again.returncode == 2 and "already holds" in again.stderr
    assert json.loads((out / "metrics.json").read_text()) == metrics
