"""The quality-phase training options, each through real training steps: the VQ autoencoder,
prediction types and min-SNR weighting, offset noise, augmentation, validation and TensorBoard."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

import udiff
from conftest import TINY
from udiff import plugins
from udiff.data import augment
from udiff.training.objective import objective_loss


def train(cli, tmp_path, toml: str = "", *flags, name: str = "run"):
    cfg, out = tmp_path / f"{name}.toml", tmp_path / name
    cfg.write_text(toml)
    code, _, err = cli("train", "--config", cfg, "--data", "digits", "--backbone", "unet", *TINY,
                       *flags, "--out", out)
    assert code == 0, err
    return out


def noise_scheduler(**options):
    comp = plugins.get("scheduler", "ddpm")
    return comp.build(comp.make_config(options=options), None)


def test_vq_autoencoder_trains_quantises_and_reports_psnr(cli, tmp_path):
    out = train(cli, tmp_path, '[autoencoder]\nname = "vq"\npreset = "tiny"\n')
    assert json.loads((out / "autoencoder" / "config.json").read_text())["component"] == "vq"
    recon = json.loads((out / "run.json").read_text())["autoencoder"]
    assert recon["held_out"] and recon["psnr"] > 5 and 0 < recon["ssim"] <= 1
    pipe = udiff.load(out)
    vq = pipe.autoencoder.vq
    latents = torch.randn(2, 4, 8, 8)
    snapped, _, _ = vq.quantize(latents)
    # decode quantises: any latent decodes exactly like its nearest codebook entries
    torch.testing.assert_close(pipe.autoencoder.decode(latents), pipe.autoencoder.decode(snapped))
    images, _ = pipe.sample_tensor([0, 1], per_label=2, steps=3)
    assert images.shape == (4, 1, 16, 16) and torch.isfinite(images).all()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_train_and_sample(cli, tiny_run, tmp_path, kind):
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    sched = noise_scheduler(prediction_type=kind)
    a = sched._train.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - sched._train.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    want = {"epsilon": noise, "v_prediction": a * noise - s * x0, "sample": x0}[kind]
    torch.testing.assert_close(sched.target(x0, noise, t), want)
    out = train(cli, tmp_path, f'[scheduler]\nname = "ddpm"\noptions = {{prediction_type = "{kind}", '
                'snr_gamma = 5.0}\n', "--autoencoder", tiny_run)
    for sampler in ("ddim", "dpm++"):  # the samplers are built with the run's prediction type
        images, _ = udiff.load(out).sample_tensor([3], per_label=2, steps=4, sampler=sampler)
        assert torch.isfinite(images).all()


def test_min_snr_weights_follow_the_prediction_type():
    t = torch.tensor([5, 200, 600, 990])
    for kind, scale in (("epsilon", lambda snr: snr), ("v_prediction", lambda snr: snr + 1),
                        ("sample", lambda snr: torch.ones_like(snr))):
        sched = noise_scheduler(prediction_type=kind, snr_gamma=5.0)
        ab = sched._train.alphas_cumprod[t]
        snr = ab / (1 - ab)
        torch.testing.assert_close(sched.loss_weight(t), snr.clamp(max=5.0) / scale(snr))
    assert noise_scheduler().loss_weight(t) is None
    w = noise_scheduler(snr_gamma=5.0).loss_weight(t)
    assert w[0] < 0.01 and w[-1] == 1.0  # epsilon: clean steps down-weighted, noisy ones kept


class Zero(torch.nn.Module):
    def forward(self, x, t, y):
        return torch.zeros_like(x)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_offset_noise_adds_a_per_channel_constant(offset):
    """With a zero prediction the epsilon loss is E[noise^2] = 1 + offset^2."""
    torch.manual_seed(0)
    x0, y = torch.randn(512, 4, 8, 8), torch.zeros(512, dtype=torch.long)
    loss = objective_loss(Zero(), noise_scheduler(), x0, y, offset)
    assert abs(loss.item() - (1 + offset ** 2)) < 0.1, loss


def test_augment_translates_and_flips_only_when_asked():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float).view(2, 1, 6, 6)
    assert torch.equal(augment(x, 0, False), x)
    gen = torch.Generator().manual_seed(0)
    shifted = augment(x, 2, False, gen)
    assert not torch.equal(shifted, x)
    # every output is a 6x6 window of the edge-padded image
    padded = torch.nn.functional.pad(x, (2,) * 4, mode="replicate")
    for i in range(2):
        assert any(torch.equal(shifted[i], padded[i, :, r:r + 6, c:c + 6])
                   for r in range(5) for c in range(5))
    flipped = augment(x.repeat(16, 1, 1, 1), 0, True, gen)
    n_flipped = sum(torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x.repeat(16, 1, 1, 1), strict=True))
    assert 0 < n_flipped < 32


def test_augmented_copies_are_cached_for_stage_two(cli, tmp_path):
    out = train(cli, tmp_path, "[data.augment]\ntranslate = 2\ncopies = 3\n")
    cache = safetensors.torch.load_file(str(out / "latents.safetensors"))
    from udiff import data as datasets

    n = len(datasets.splits(datasets.load("digits", 16), 0.1, 0.1, 0).train)  # 10% held out
    assert n == 1618 and cache["latents"].shape[0] == 3 * n
    assert torch.equal(cache["labels"], cache["labels"][:n].repeat(3))
    first, second = cache["latents"][:n], cache["latents"][n:2 * n]
    assert not torch.allclose(first, second)  # the copies really differ
    cfg = (out / "config.toml").read_text()
    assert "hflip = false" in cfg  # mirroring stays off unless asked


def test_validation_logs_grids_and_tensorboard_without_changing_the_weights(cli, tiny_run, tmp_path):
    pytest.importorskip("tensorboard")
    plain = train(cli, tmp_path, "", "--autoencoder", tiny_run, name="plain")
    watched = train(cli, tmp_path, "", "--autoencoder", tiny_run, "--validate-every", "5",
                    "--log-with", "tensorboard", name="watched")
    rows = [json.loads(line) for line in (watched / "log.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["stage"] == "validation"]
    assert [r["step"] for r in val] == [5, 10] and all(0 <= r["label_accuracy"] <= 1 for r in val)
    assert sorted(p.name for p in (watched / "validation").iterdir()) == ["step-000005.png",
                                                                          "step-000010.png"]
    assert list((watched / "tensorboard").rglob("events.out.tfevents.*"))
    for run in (plain, watched):
        assert (run / "training.png").stat().st_size > 0
    a = safetensors.torch.load_file(str(plain / "denoiser" / "model.safetensors"))
    b = safetensors.torch.load_file(str(watched / "denoiser" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # validation forks the RNG


def test_tensorboard_missing_is_one_line(cli, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as if not installed
    cli.fails("train", "--data", "digits", *TINY, "--log-with", "tensorboard",
              "--out", tmp_path / "x", match="udiff-core[tensorboard]")
    assert not (tmp_path / "x").exists()
