"""Guidance interval and guidance rescale: the math on known tensors, then through sampling."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import udiff
from udiff.sampling.guidance import active, guide, parse_interval


def test_guide_is_cfg_and_rescale_restores_the_conditional_std():
    cond = torch.tensor([[1.0, 3.0, 5.0, 7.0], [0.0, 0.0, 2.0, 2.0]])  # [B=2, 4]
    uncond = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    plain = guide(cond, uncond, 3.0)
    assert torch.equal(plain[0], torch.tensor([1.0, 7.0, 13.0, 19.0]))  # u + 3 (c - u)
    assert torch.equal(guide(cond, uncond, 3.0, rescale=0.0), plain)
    full = guide(cond, uncond, 3.0, rescale=1.0)
    # per sample: the guided prediction scaled to the conditional one's std (here 1/3 of it)
    assert torch.allclose(full, plain * (cond.std(1, keepdim=True) / plain.std(1, keepdim=True)))
    assert torch.allclose(full.std(1), cond.std(1))
    half = guide(cond, uncond, 3.0, rescale=0.5)
    assert torch.allclose(half, 0.5 * full + 0.5 * plain)
    assert torch.equal(guide(cond, uncond, 1.0), cond)  # scale 1: the conditional prediction


def test_interval_is_on_the_normalised_noise_level():
    assert active(torch.tensor(999), 1000, None)
    assert active(torch.tensor(500), 1000, (0.2, 0.7))
    assert not active(torch.tensor(900), 1000, (0.2, 0.7))
    assert not active(torch.tensor(100), 1000, (0.2, 0.7))
    assert parse_interval("0.1,0.8") == (0.1, 0.8) and parse_interval(None) is None
    for bad in ("0.8,0.1", "-1,0.5", "0.5", "a,b"):
        with pytest.raises(ValueError):
            parse_interval(bad)


def test_sampling_with_an_interval_and_rescale(tiny_run, monkeypatch):
    pipe = udiff.load(tiny_run)
    args = ([0, 3], 2)
    spec = pipe.spec(steps=6, guidance=4.0, seed=5, sampler="dpm++")
    plain = pipe.sample_tensor(*args, spec)[0]
    assert torch.equal(pipe.sample_tensor(*args, spec.but(interval=(0.0, 1.0)))[0], plain)
    assert torch.equal(pipe.sample_tensor(*args, spec.but(rescale=0.0))[0], plain)
    # An empty interval never guides: the same as guidance 1 (and one pass per step, not two).
    rows = []
    forward = pipe.denoiser.forward
    monkeypatch.setattr(pipe.denoiser, "forward", lambda x, *a, **k: rows.append(len(x))
                        or forward(x, *a, **k))
    never = pipe.sample_tensor(*args, spec.but(interval=(0.0, 0.0)))[0]
    assert set(rows) == {4}  # 4 images, no unconditional half
    unguided = pipe.sample_tensor(*args, spec.but(guidance=1.0))[0]
    assert torch.allclose(never, unguided, atol=1e-6)
    rows.clear()
    partly = pipe.sample_tensor(*args, spec.but(interval=(0.5, 1.0)))[0]
    assert 4 in rows and 8 in rows  # guided at high noise only
    assert not torch.allclose(partly, plain) and not torch.allclose(partly, unguided)
    rescaled = pipe.sample_tensor(*args, spec.but(rescale=0.7))[0]
    assert (rescaled - plain).abs().max() > 1e-3


def test_cli_flags(cli, tiny_run, tmp_path):
    code, _, err = cli("sample", tiny_run, "--labels", "1", "--per-label", "2", "--steps", "4",
                       "--guidance-interval", "0.2,0.9", "--guidance-rescale", "0.5", "--out",
                       tmp_path / "g.png")
    assert code == 0, err
    cli.fails("sample", tiny_run, "--guidance-interval", "0.9,0.1", "--out", tmp_path / "x.png",
              match="--guidance-interval")
    cli.fails("sample", tiny_run, "--guidance-rescale", "2", "--out", tmp_path / "x.png",
              match="--guidance-rescale")


def test_bench_guidance_sweeps_scale_by_interval(cli, tiny_run, tmp_path):
    """`udiff bench guidance`: one row per (scale, interval), scale 1 once (it is unguided
    whatever the interval), each row the same numbers `udiff eval` gives for that setting."""
    out = tmp_path / "sweep"
    code, stdout, err = cli("bench", "guidance", tiny_run, "--scales", "1,3",
                            "--intervals", "0-1,0.2-0.8", "--per-label", "3", "--out", out)
    assert code == 0, err
    result = json.loads((out / "guidance.json").read_text())
    got = [(r["guidance"], r["interval"]) for r in result["rows"]]
    assert got == [(1.0, [0.0, 1.0]), (3.0, [0.0, 1.0]), (3.0, [0.2, 0.8])]
    assert "3 settings" in stdout and "interval [0.2, 0.8]" in err  # progress, a line a setting
    assert (out / "guidance.md").read_text().count("\n| unet |") == 3
    with Image.open(out / "guidance.png") as im:
        assert im.width > 200
    code, _, err = cli("eval", tiny_run, "--per-label", "3", "--guidance", "3",
                       "--guidance-interval", "0.2,0.8", "--out", tmp_path / "m.json")
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["fid"] == result["rows"][2]["fid"] and m["label_accuracy"] == result["rows"][2][
        "label_accuracy"]


@pytest.mark.parametrize("argv, match", [
    (["guidance"], "required: RUN_DIR"),
    (["guidance", "RUN", "--scales", "1,x"], "--scales"),
    (["guidance", "RUN", "--scales", "0.5"], "at least 1"),
    (["guidance", "RUN", "--intervals", "0.9-0.1"], "--intervals"),
    (["guidance", "RUN", "--per-label", "1"], "--per-label"),
])
def test_bench_guidance_bad_input_is_one_line(cli, tiny_run, tmp_path, argv, match):
    argv = [str(tiny_run) if a == "RUN" else a for a in argv]
    cli.fails("bench", *argv, "--out", tmp_path / "g", match=match)
    assert not (tmp_path / "g").exists()
