"""The wall time a run will take on this machine, from a short timed probe of its real steps: a
few optimizer steps of each stage on random inputs of the run's shapes (speed does not depend on
the values), one encoder batch, the reference classifier's step and the sampler's forward pass,
each multiplied by how often the run does it. Runs under a forked RNG and touches no file."""

from __future__ import annotations

import time

import torch

from ..evaluation import reference
from ..evaluation.reference import ReferenceClassifier
from ..plugins.assembly import assemble
from ..sampling.spec import run_spec
from .objective import AutoencoderObjective, Denoising
from .step import DenoiserTraining
from .validation import LOSS_DRAWS

WARMUP, TIMED = 1, 3


def seconds_per_call(fn, warmup: int = WARMUP, timed: int = TIMED) -> float:
    """The median of ``timed`` calls after ``warmup`` (first calls allocate and pick kernels)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def adamw_step(module: torch.nn.Module, loss_fn):
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def estimate(cfg, plan, accelerator) -> dict:
    """-> {"seconds": total, "parts": {what: seconds}, "per_step": {stage: seconds}}."""
    with torch.random.fork_rng(devices=[]):
        return _estimate(cfg, plan, accelerator)


def _estimate(cfg, plan, accelerator) -> dict:
    device = accelerator.device
    t, ctx = cfg.training, plan.context
    c, s = ctx.image_channels, ctx.image_size
    parts, per_step = {}, {}
    frozen = plan.given_autoencoder and not cfg.autoencoder.finetune
    autoencoder = plan.given_autoencoder[2] if plan.given_autoencoder else plan.autoencoder.build(ctx)
    autoencoder = autoencoder.to(device)
    if not frozen and t.autoencoder_steps:
        images = torch.rand(t.autoencoder_batch_size, c, s, s, device=device) * 2 - 1
        objective = AutoencoderObjective(autoencoder).train()
        per_step["autoencoder"] = seconds_per_call(adamw_step(objective, lambda: objective(images)[0]))
        parts["stage 1"] = per_step["autoencoder"] * t.autoencoder_steps
    autoencoder.eval()
    cached = len(plan.splits.train) * (cfg.data.augment.copies if cfg.data.augment.active else 1)
    batch = torch.rand(min(256, cached), c, s, s, device=device) * 2 - 1
    with torch.no_grad():
        parts["latents"] = seconds_per_call(lambda: autoencoder.encode(batch), 1, 2) * -(-cached // 256)
    stack = assemble(ctx, plan.denoiser.build, plan.conditioner.build, plan.scheduler.build,
                     autoencoder=autoencoder)
    # the trainer's own step (AdamW, clipping, EMA, accelerate), on a micro-batch of its size
    # eager even for --compile: compiling the probe would cost the run's compile twice
    training = DenoiserTraining(accelerator, stack.denoiser.to(device), stack.conditioner.to(device),
                                stack.scheduler, t.model_copy(update={"compile": False}))
    lc, ls = stack.context.latent_channels, stack.context.latent_size
    micro = max(1, t.batch_size // t.gradient_accumulation_steps)
    x0 = torch.randn(micro, lc, ls, ls, device=device)
    y = torch.randint(0, ctx.num_labels, (micro,), device=device)
    # whole optimizer steps: accelerate's micro-batch counter ends on a boundary, as it began
    per_step["denoiser"] = seconds_per_call(
        lambda: [training.step(x0, y) for _ in range(t.gradient_accumulation_steps)])
    parts["stage 2"] = per_step["denoiser"] * t.max_steps
    model = Denoising(stack.denoiser, stack.conditioner)
    if t.validate_every:
        parts["validation"] = validation_seconds(cfg, plan, model, stack, device)
    return {"seconds": round(sum(parts.values()), 1),
            "parts": {k: round(v, 1) for k, v in parts.items()},
            "per_step": {k: round(v, 4) for k, v in per_step.items()}}


def validation_seconds(cfg, plan, model, stack, device) -> float:
    """The reference classifier's training once, then per validation: the sampler's passes over
    ``validate_per_label`` samples of every label and the held-out loss."""
    t, ctx = cfg.training, plan.context
    count = t.max_steps // t.validate_every + (1 if t.max_steps % t.validate_every else 0)
    classifier = ReferenceClassifier(ctx.image_channels, ctx.num_labels)
    images = torch.rand(reference.BATCH, ctx.image_channels, ctx.image_size, ctx.image_size) * 2 - 1
    labels = torch.randint(0, ctx.num_labels, (reference.BATCH,))
    fit = seconds_per_call(adamw_step(classifier, lambda: torch.nn.functional.cross_entropy(
        classifier(images), labels)), 1, 3)
    fit *= reference.EPOCHS * -(-round(len(plan.splits.train) * (1 - reference.HOLDOUT))
                                // reference.BATCH)  # train_reference's steps
    spec = run_spec(cfg)
    n = ctx.num_labels * t.validate_per_label
    lc, ls = stack.context.latent_channels, stack.context.latent_size
    model.eval()
    x = torch.randn(min(n, 256), lc, ls, ls, device=device)
    ts = torch.zeros(len(x), dtype=torch.long, device=device)
    with torch.no_grad():
        one = seconds_per_call(lambda: model(x, ts, ts), 1, 3) / len(x)  # per image and pass
    # a guided step also runs the null label: twice the passes inside the interval
    guided = 0.0 if spec.guidance == 1 else (spec.interval[1] - spec.interval[0]
                                              if spec.interval else 1.0)
    sampling = spec.steps * n * (1 + guided) * one
    held = 0 if plan.splits.held is None else len(plan.splits.held)
    return fit + count * (sampling + held * LOSS_DRAWS * one)
