"""Stock diffusers' DiTPipeline reproduces udiff's samples from an exported run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DiTPipeline

import udiff
from udiff.cli import main

TINY = ["--preset", "tiny", "--autoencoder-steps", "20", "--max-steps", "30", "--batch-size", "16"]


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dit") / "run"
    # noise prediction: what diffusers' DiTPipeline samples
    assert main(["train", "--data", "digits", "--backbone", "dit", *TINY, "--scheduler", "ddpm",
                 "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_dit_pipeline_matches_udiff(dit_run, tmp_path, guidance, scheduler):
    out = tmp_path / "export"
    assert main(["export", str(dit_run), "--format", "diffusers", "--scheduler", scheduler,
                 "--out", str(out)]) == 0
    labels = [0, 3, 7, 9]
    ours, _ = udiff.load(dit_run).sample_tensor(labels, per_label=1, steps=8, guidance=guidance,
                                                seed=0, sampler=scheduler)
    ours = ((ours + 1) / 2).permute(0, 2, 3, 1).numpy()  # [N, H, W, C] in [0, 1]
    pipe = DiTPipeline.from_pretrained(out)
    theirs = pipe(class_labels=labels, guidance_scale=guidance, num_inference_steps=8,
                  generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() <= 2 / 255
    assert ours.std() > 0.05  # real images, not a constant both sides agree on
    assert pipe.get_label_ids(["3", "7"]) == [3, 7]  # id2label travelled with the export


def test_export_refuses_occupied_out(dit_run, tmp_path, capsys):
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(dit_run), "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


def test_exported_config_maps_null_label(dit_run, tmp_path):
    out = tmp_path / "e"
    assert main(["export", str(dit_run), "--scheduler", "ddim", "--out", str(out)]) == 0
    cfg = json.loads((out / "transformer" / "config.json").read_text())
    assert cfg["num_embeds_ada_norm"] == 1000 and cfg["out_channels"] == 8  # learn_sigma
    assert json.loads((out / "vae" / "config.json").read_text())["scaling_factor"] > 0


def test_unet_and_dit_runs_share_the_config_but_the_backbone(dit_run, tmp_path):
    unet_run = tmp_path / "unet"
    assert main(["train", "--data", "digits", "--backbone", "unet", *TINY, "--scheduler", "ddpm",
                 "--out", str(unet_run)]) == 0

    def lines(run):  # config.toml without its [denoiser] table
        out, skip = [], False
        for line in (run / "config.toml").read_text().splitlines():
            if line.startswith("["):
                skip = line.startswith("[denoiser")
            if not skip:
                out.append(line)
        return out

    assert lines(unet_run) == lines(dit_run)
    assert (unet_run / "config.toml").read_text() != (dit_run / "config.toml").read_text()


def test_bf16_checkpointed_training(tmp_path):
    run = tmp_path / "bf16"
    assert main(["train", "--data", "digits", "--backbone", "dit", *TINY, "--mixed-precision",
                 "bf16", "--gradient-checkpointing", "--out", str(run)]) == 0
    images, _ = udiff.load(run).sample_tensor([4], per_label=2, steps=3)
    assert torch.isfinite(images).all()
