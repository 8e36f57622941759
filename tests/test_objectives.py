"""The built-in ``flow`` objective, and every installed backbone × every objective."""

from __future__ import annotations

import json
import math

import pytest
import torch

import udiff
from udiff import Context, plugins
from udiff.testing import OBJECTIVES, build, check_training


def flow(**options):
    comp = plugins.get("scheduler", "flow")
    return comp.build(comp.make_config(options=options), Context(latent_size=8))


def test_flow_interpolates_and_targets_the_velocity():
    sched = flow()
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.0, 250.0, 1000.0])
    xt = sched.add_noise(x0, noise, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    torch.testing.assert_close(xt[2], noise[2])
    torch.testing.assert_close(sched.target(x0, noise, t), noise - x0)


def test_flow_timestep_sampling_and_shift():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    logit = flow().sample_timesteps(20000, "cpu", g())
    uniform = flow(timestep_sampling="uniform").sample_timesteps(20000, "cpu", g())
    shifted = flow(shift=3.0).sample_timesteps(20000, "cpu", g())
    for t in (logit, uniform, shifted):
        assert t.dtype == torch.float32 and 0 < t.min() and t.max() < 1000
    assert abs(logit.median() - 500) < 15 and abs(uniform.mean() - 500) < 15
    assert logit.std() < uniform.std()  # logit-normal concentrates on the middle
    s = 0.5
    assert shifted.median().item() == pytest.approx(1000 * 3 * s / (1 + 2 * s), abs=15)  # 750


def test_resolution_shift_follows_flux_rule():
    # 128x128 latents = 64^2 = 4096 tokens: Flux's max shift exp(1.15); 32^2 latents: exp(0.5).
    comp = plugins.get("scheduler", "flow")
    cfg = comp.make_config(options={"resolution_shift": True})
    assert comp.build(cfg, Context(latent_size=128)).shift == pytest.approx(math.exp(1.15))
    assert comp.build(cfg, Context(latent_size=32)).shift == pytest.approx(math.exp(0.5))
    assert comp.build(cfg, Context(latent_size=32)).sampler.config.shift == pytest.approx(
        math.exp(0.5))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_sampling_follows_the_exact_velocity_to_the_data(shift):
    """With the true velocity of a one-point data set, Euler on the flow lands on the point."""
    sched = flow(shift=shift)
    point = torch.randn(1, 4, 8, 8)
    x = torch.randn(2, 4, 8, 8)
    sched.set_timesteps(7)
    for t in sched.timesteps:
        s = t / 1000  # the noise level the denoiser sees as t
        velocity = (x - point) / s  # x_t = (1 - s) point + s eps  =>  eps - point
        assert sched.scale_model_input(x, t) is x  # flow sampling has no input scaling
        x = sched.step(velocity, t, x)
    torch.testing.assert_close(x, point.expand_as(x), atol=1e-4, rtol=0)


def installed_backbones() -> list[str]:
    plugins.reset()
    return sorted(plugins.registry().components["denoiser"])


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("backbone", installed_backbones())
def test_every_backbone_trains_with_every_objective(cli, tiny_run, tmp_path, backbone, objective):
    # One fixed batch: the objective's loss must go down for this backbone...
    _, _, denoiser, conditioner = build(backbone, None, udiff.testing.CONTEXT, seed=0)
    first, last = check_training(denoiser, conditioner, udiff.testing.CONTEXT, scheduler=objective)
    assert last < first
    # ...and a real run (the tiny run's autoencoder reused) trains, saves and samples with it.
    out = tmp_path / "run"
    code, _, err = cli("train", "--data", "digits", "--backbone", backbone, "--preset", "tiny",
                       "--autoencoder", tiny_run, "--scheduler", objective, "--max-steps", "8",
                       "--batch-size", "16", "--out", out)
    assert code == 0, err
    assert json.loads((out / "scheduler" / "config.json").read_text())["component"] == objective
    images, labels = udiff.load(out).sample_tensor([2, 5], per_label=2, steps=3, guidance=2.0)
    assert images.shape == (4, 1, 16, 16) and torch.isfinite(images).all()


def test_flow_run_refuses_a_noise_sampler(cli, tiny_run, tmp_path):
    out = tmp_path / "flow-run"
    code, _, err = cli("train", "--data", "digits", "--backbone", "unet", "--preset", "tiny",
                       "--autoencoder", tiny_run, "--scheduler", "flow", "--max-steps", "2",
                       "--batch-size", "8", "--out", out)
    assert code == 0, err
    line = cli.fails("sample", out, "--labels", "1", "--scheduler", "dpm++", "--out",
                     tmp_path / "g.png", match="cannot sample a model trained with 'flow'")
    assert "(flow)" in line and not (tmp_path / "g.png").exists()
    cli.fails("sample", tiny_run, "--labels", "1", "--scheduler", "flow", "--out",
              tmp_path / "g.png", match="trained with 'ddpm'")
