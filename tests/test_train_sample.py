"""Real tiny training runs through the CLI: files on disk, loading, deterministic sampling."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest
import torch
from PIL import Image

import udiff
from conftest import TINY


def test_run_directory_layout(tiny_run):
    for part in ("autoencoder", "denoiser", "conditioner"):
        meta = json.loads((tiny_run / part / "config.json").read_text())
        assert (tiny_run / part / "model.safetensors").stat().st_size > 0
        assert meta["udiff_version"] == udiff.__version__ and meta["plugin_version"]
    den = json.loads((tiny_run / "denoiser" / "config.json").read_text())
    assert den["component"] == "unet" and den["plugin"] == "udiff-unet" and den["ema"] is True
    ae = json.loads((tiny_run / "autoencoder" / "config.json").read_text())
    assert ae["component"] == "kl" and ae["scaling_factor"] > 0
    cfg = tomllib.loads((tiny_run / "config.toml").read_text())
    assert cfg["denoiser"]["name"] == "unet" and cfg["training"]["max_steps"] == 10
    run = json.loads((tiny_run / "run.json").read_text())
    assert run["labels"] == [str(i) for i in range(10)]
    log = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert {row["stage"] for row in log} == {"autoencoder", "autoencoder_eval", "denoiser"}
    assert run["autoencoder"]["held_out"] and run["autoencoder"]["psnr"] > 0


def test_config_file_roundtrip_reproduces_the_run(cli, tiny_run, tmp_path):
    """The saved config.toml is a complete recipe: training from it gives identical weights."""
    out = tmp_path / "again"
    code, _, err = cli("train", "--config", tiny_run / "config.toml", "--out", out)
    assert code == 0, err
    from safetensors.torch import load_file

    a = load_file(tiny_run / "denoiser" / "model.safetensors")
    b = load_file(out / "denoiser" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_python_api_sampling_is_deterministic(tiny_run):
    pipe = udiff.load(tiny_run)
    a = pipe.sample(labels=[0, 3], per_label=2, steps=5, guidance=3.0, seed=0)
    b = pipe.sample(labels=[0, 3], per_label=2, steps=5, guidance=3.0, seed=0)
    c = pipe.sample(labels=[0, 3], per_label=2, steps=5, guidance=3.0, seed=1)
    assert len(a) == 4 and all(isinstance(im, Image.Image) for im in a)
    assert a[0].size == (16, 16)
    arr = lambda ims: np.stack([np.asarray(i) for i in ims])  # noqa: E731
    assert np.array_equal(arr(a), arr(b)) and not np.array_equal(arr(a), arr(c))


def test_every_sampler_and_guidance(tiny_run):
    pipe = udiff.load(tiny_run)
    outs = {}
    for sched in ("ddpm", "ddim", "dpm++"):
        images, labels = pipe.sample_tensor([1, 2], per_label=2, steps=4, guidance=2.0, seed=0,
                                            sampler=sched)
        assert images.shape == (4, 1, 16, 16) and torch.isfinite(images).all()
        assert labels.tolist() == [1, 1, 2, 2]
        outs[sched] = images
    assert not torch.equal(outs["ddim"], outs["dpm++"])
    unguided, _ = pipe.sample_tensor([1, 2], per_label=2, steps=4, guidance=1.0, seed=0,
                                     sampler="ddim")
    assert not torch.equal(unguided, outs["ddim"])


def test_cli_sample_writes_grid(cli, tiny_run, tmp_path):
    out = tmp_path / "grid.png"
    code, _, err = cli("sample", tiny_run, "--labels", "0,3", "--per-label", "8", "--steps", "5",
                       "--scheduler", "dpm++", "--guidance", "3.0", "--seed", "0", "--out", out)
    assert code == 0, err
    with Image.open(out) as im:
        assert im.height < im.width  # two rows of eight


def test_reuse_autoencoder_from_another_run(cli, tiny_run, tmp_path):
    out = tmp_path / "reuse"
    code, _, err = cli("train", "--data", "digits", "--backbone", "unet", *TINY,
                       "--autoencoder", tiny_run, "--out", out)
    assert code == 0, err
    a = (tiny_run / "autoencoder" / "model.safetensors").read_bytes()
    assert (out / "autoencoder" / "model.safetensors").read_bytes() == a
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {row["stage"] for row in log} == {"autoencoder_eval", "denoiser"}  # stage 1 skipped


def test_training_lowers_the_loss(cli, tmp_path):
    out = tmp_path / "longer"
    code, _, err = cli("train", "--data", "digits", "--backbone", "unet", "--preset", "tiny",
                       "--autoencoder-steps", "60", "--max-steps", "100", "--out", out)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ae = [r["loss"] for r in rows if r["stage"] == "autoencoder"]
    assert ae[-1] < 0.5 * ae[0]
    den = [r["loss"] for r in rows if r["stage"] == "denoiser"]
    assert den[-1] < 0.9  # epsilon-MSE starts at ~1 for unit-variance latents


def test_info_sd15_on_meta_device(cli):
    code, out, _ = cli("info", "--backbone", "unet", "--preset", "sd15", "--json")
    info = json.loads(out)
    assert code == 0 and info["denoiser_params"] == 859_520_964
    assert info["params"] > info["denoiser_params"]
    assert round(info["macs_per_forward"] / 1e9, 1) == 88.2  # the README's figure at 256²


def test_bf16_and_gradient_checkpointing_flags(cli, tmp_path):
    out = tmp_path / "bf16"
    code, _, err = cli("train", "--data", "digits", "--backbone", "unet", *TINY,
                       "--mixed-precision", "bf16", "--gradient-checkpointing", "--device", "cpu",
                       "--out", out)
    assert code == 0, err
    cfg = tomllib.loads((out / "config.toml").read_text())["training"]
    assert cfg["mixed_precision"] == "bf16" and cfg["gradient_checkpointing"] is True
    images, _ = udiff.load(out).sample_tensor([0], per_label=1, steps=2)
    assert torch.isfinite(images).all()


def test_xformers_without_the_extra_is_one_line(cli, tmp_path):
    import importlib.util

    if importlib.util.find_spec("xformers") is not None:
        import pytest

        pytest.skip("xformers is installed here")
    cli.fails("train", "--data", "digits", "--backbone", "unet", *TINY, "--attention", "xformers",
              "--out", tmp_path / "x", match="udiff-core[xformers]")
    assert not (tmp_path / "x").exists()


def train_tiny_with(cli, tmp_path, toml: str):
    """A tiny digits run whose config file holds ``toml``; returns the run directory."""
    cfg, out = tmp_path / "extra.toml", tmp_path / "run"
    cfg.write_text(toml)
    code, _, err = cli("train", "--config", cfg, "--data", "digits", "--backbone", "unet", *TINY,
                       "--out", out)
    assert code == 0, err
    return out


def test_gradient_accumulation_counts_optimizer_steps(cli, tmp_path):
    out = train_tiny_with(cli, tmp_path, "[training]\ngradient_accumulation_steps = 3\n")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "denoiser"] == [10]  # --max-steps 10


def test_v_prediction_objective(cli, tmp_path):
    from udiff import plugins

    comp = plugins.get("scheduler", "ddpm")
    sched = comp.build(comp.make_config(options={"prediction_type": "v_prediction"}), None)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    a = sched._train.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - sched._train.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(sched.target(x0, noise, t), a * noise - s * x0)
    torch.testing.assert_close(sched.add_noise(x0, noise, t), a * x0 + s * noise)
    out = train_tiny_with(cli, tmp_path,
                          '[scheduler]\nname = "ddpm"\noptions = {prediction_type = "v_prediction"}\n')
    images, _ = udiff.load(out).sample_tensor([2], per_label=2, steps=3, sampler="dpm++")
    assert torch.isfinite(images).all()


@pytest.mark.slow
def test_train_compile_compiles_the_denoiser_and_trains_the_same(cli, tmp_path, monkeypatch):
    """`udiff train --compile`: torch.compile on the denoiser in place; same weights as eager
    (within float tolerance: inductor reorders arithmetic)."""
    import safetensors.torch

    compiled = []
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: (
        compiled.append(type(self).__name__), real(self, *a, **k))[1])
    args = ["train", "--data", "digits", "--backbone", "dit", "--preset", "tiny",
            "--autoencoder-steps", "5", "--max-steps", "4", "--batch-size", "16"]
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        code, _, err = cli(*args, *extra, "--out", tmp_path / name)
        assert code == 0, err
        runs[name] = safetensors.torch.load_file(tmp_path / name / "denoiser" / "model.safetensors")
    assert compiled == ["DiT"]  # the denoiser, once, only with --compile
    assert tomllib.loads((tmp_path / "compiled" / "config.toml").read_text())["training"]["compile"]
    assert runs["eager"].keys() == runs["compiled"].keys()
    worst = max((runs["eager"][k] - runs["compiled"][k]).abs().max().item() for k in runs["eager"])
    assert worst <= 1e-4, worst
