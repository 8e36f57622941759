"""Conformance check for plugin authors: call :func:`check_denoiser` from your own tests.

    from udiff.testing import check_denoiser

    def test_conformance():
        check_denoiser("mybackbone")           # or a Component / a registered plugin object
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import safetensors.torch
import torch

from . import plugins
from .context import Context
from .plugins.assembly import Part, assemble
from .plugins.contract import GradientCheckpointing
from .training.objective import Denoising, Draws, objective_loss

CONTEXT = Context(image_channels=1, image_size=16, latent_channels=4, latent_size=8, num_labels=3)


def build(name: str, preset: str | None, context: Context, seed: int):
    """The denoiser (seeded) and a label conditioner sized for it."""
    comp = plugins.get("denoiser", name)
    if preset is None and "tiny" in comp.presets:
        preset = "tiny"
    torch.manual_seed(seed)
    lab = plugins.get("conditioner", "label")
    stack = assemble(context, Part(comp, comp.make_config(preset)).build,
                     Part(lab, lab.make_config(options={"dropout": 0.0})).build)
    assert isinstance(stack.denoiser, torch.nn.Module), "the factory must return a torch.nn.Module"
    return comp, preset, stack.denoiser, stack.conditioner


def batch(context: Context, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, s = context.latent_channels, context.latent_size
    x = torch.randn(n, c, s, s, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, context.num_labels, (n,), generator=g)
    return x, t, y


def check_shape(denoiser, conditioner, context: Context) -> None:
    x, t, y = batch(context)
    out = denoiser(x, t, conditioner(y))
    c = x.shape[1]
    assert out.shape[0] == x.shape[0] and out.shape[2:] == x.shape[2:], (
        f"prediction shape {tuple(out.shape)} does not match latents {tuple(x.shape)}")
    assert out.shape[1] in (c, 2 * c), f"prediction has {out.shape[1]} channels, latents {c}"
    assert torch.isfinite(out).all(), "prediction is not finite"


def outputs(denoiser, conditioner, context: Context) -> torch.Tensor:
    x, t, y = batch(context, seed=1)
    with torch.no_grad():
        return denoiser(x, t, conditioner(y))


def check_determinism(name, preset, context) -> None:
    a = build(name, preset, context, seed=123)
    b = build(name, preset, context, seed=123)
    for (ka, va), (kb, vb) in zip(a[2].state_dict().items(), b[2].state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), f"weights differ under one seed at {ka}"
    a[2].eval()
    b[2].eval()
    assert torch.equal(outputs(a[2], a[3], context), outputs(b[2], b[3], context)), (
        "outputs differ under one seed")


def check_roundtrip(name, preset, denoiser, conditioner, context) -> None:
    """safetensors save -> fresh build with another seed -> load -> identical outputs."""
    denoiser.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        safetensors.torch.save_model(denoiser, str(path))
        _, _, other, _ = build(name, preset, context, seed=999)
        safetensors.torch.load_model(other, str(path))
    other.eval()
    assert torch.equal(outputs(denoiser, conditioner, context),
                       outputs(other, conditioner, context)), "safetensors round trip changed outputs"


OBJECTIVES = ("ddpm", "flow")  # noise prediction and rectified flow: every backbone takes both


def check_training(denoiser, conditioner, context, steps: int = 15,
                   scheduler: str = "ddpm") -> tuple[float, float]:
    """A few AdamW steps on one fixed batch (fixed noise and timesteps) of ``scheduler``'s
    objective must lower the loss."""
    sched_comp = plugins.get("scheduler", scheduler)
    scheduler = sched_comp.build(sched_comp.make_config(), context)
    x, _, y = batch(context, n=8, seed=2)
    params = list(denoiser.parameters()) + list(conditioner.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    denoiser.train()
    losses = []
    for _ in range(steps):
        torch.manual_seed(7)  # the same noise and timesteps every step: a fixed batch
        loss = objective_loss(Denoising(denoiser, conditioner), scheduler, x, y)
        opt.zero_grad()
        loss.backward()
        unused = [n for n, p in denoiser.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, (f"parameters unused by forward break data-parallel training (DDP): "
                            f"{unused[:5]}")
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], (f"training with {scheduler} did not lower the loss: "
                                    f"{losses[0]} -> {losses[-1]}")
    return losses[0], losses[-1]


# Noise-prediction loss on held-out draws after LEARNING_STEPS steps on a small fixed task; the
# target's mean square is 1, so 1 is what predicting zeros scores. Measured (tiny presets, 2 CPU
# cores): unet 0.26, dit 0.29, flux 0.30, the docs' convnet 0.31; the convnet with its output
# layer left at random weights (std 0.5 instead of a small init) 0.61.
LEARNING_STEPS, LEARNING_BOUND = 100, 0.5


def check_learning(name, preset, context, steps: int = LEARNING_STEPS,
                   bound: float = LEARNING_BOUND) -> tuple[float, float]:
    """Learn to denoise 8 fixed latents (epsilon objective, fresh noise and timesteps every step,
    AdamW 2e-3) and score held-out draws: the loss must fall below ``bound``. A backbone that
    only *lowers* its loss (say, from a badly initialised output layer) fails here."""
    _, _, denoiser, conditioner = build(name, preset, context, seed=0)
    sched_comp = plugins.get("scheduler", "ddpm")
    scheduler = sched_comp.build(sched_comp.make_config(), context)
    x, _, y = batch(context, n=8, seed=2)
    model = Denoising(denoiser, conditioner)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def held_out() -> float:
        model.eval()
        with torch.no_grad():
            losses = [objective_loss(model, scheduler, x, y, draws=Draws(100 + i)).item()
                      for i in range(4)]
        model.train()
        return sum(losses) / len(losses)

    first, draws = held_out(), Draws(1)
    for _ in range(steps):
        loss = objective_loss(model, scheduler, x, y, draws=draws)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = held_out()
    assert last <= bound, (f"{name} did not learn a small fixed denoising task: held-out loss "
                           f"{first:.3f} -> {last:.3f} after {steps} steps, bound {bound} (the "
                           "built-ins reach about 0.3; is an output layer left at random init?)")
    return first, last


def check_gradient_checkpointing(name, preset, context) -> None:
    _, _, plain, cond = build(name, preset, context, seed=5)
    _, _, ckpt, _ = build(name, preset, context, seed=5)
    assert isinstance(ckpt, GradientCheckpointing), "no enable_gradient_checkpointing()"
    ckpt.enable_gradient_checkpointing()
    plain.train()
    ckpt.train()
    x, t, y = batch(context, seed=3)
    a, b = plain(x, t, cond(y)), ckpt(x, t, cond(y))
    torch.testing.assert_close(a, b, msg="gradient checkpointing changed the forward result")
    a.square().mean().backward()
    b.square().mean().backward()  # must run: checkpointed backward recomputes the forward


def check_denoiser(name: str, preset: str | None = None, context: Context = CONTEXT) -> dict:
    """Run every conformance check on the denoiser ``name``; raises AssertionError on failure."""
    comp, preset, denoiser, conditioner = build(name, preset, context, seed=0)
    check_shape(denoiser, conditioner, context)
    check_determinism(name, preset, context)
    check_roundtrip(name, preset, denoiser, conditioner, context)
    losses = {}
    for objective in OBJECTIVES:  # a fresh model for each objective
        _, _, fresh, cond = build(name, preset, context, seed=0)
        losses[objective] = check_training(fresh, cond, context, scheduler=objective)
    learned = check_learning(name, preset, context)
    check_gradient_checkpointing(name, preset, context)
    first, last = losses["ddpm"]
    return {"component": comp.name, "plugin": comp.plugin, "preset": preset,
            "loss_first": first, "loss_last": last, "losses": losses,
            "held_out_loss": learned[1]}


__all__ = ["CONTEXT", "LEARNING_BOUND", "check_denoiser", "check_learning"]
