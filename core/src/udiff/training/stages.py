"""The two stages of a run. Stage 1 trains the autoencoder (or takes another run's, or a
pretrained one, read in preflight); stage 2 trains conditioner + denoiser on its latent source's
latents (:mod:`.sources`) with the scheduler's objective. Both stages resume from checkpoints.

Each function takes the run's :class:`~udiff.training.services.Services` (accelerator, log,
progress bars, checkpointing) and what it works on, never the trainer."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .. import data as datasets
from ..context import Context
from ..errors import UdiffError
from ..evaluation.quality import reconstruction
from ..run.directory import component_of, save_component
from ..weights import quantize, sharding
from .batches import Batches, shuffled
from .early_stop import EarlyStopping
from .objective import AutoencoderObjective
from .preflight import frozen_autoencoder
from .services import Services
from .setup import prepare, say
from .step import DenoiserTraining
from .validation import Validation


def train_autoencoder(run: Services, plan, ctx: Context, checkpoint: Path | None):
    """Stage 1: the autoencoder, its (component, config), and its scaling factor if known."""
    cfg, acc = run.cfg, run.accelerator
    if plan.given_autoencoder:  # another run's or a pretrained one, read in preflight
        comp, config, autoencoder, scaling = plan.given_autoencoder
        check_latent_grid(cfg, autoencoder)
        if not cfg.autoencoder.finetune:  # frozen: straight to the latent cache
            return autoencoder.to(acc.device).eval(), comp, config, scaling
        autoencoder.train().requires_grad_(True)
    else:
        comp, config = plan.autoencoder.component, plan.autoencoder.config
        autoencoder, scaling = plan.autoencoder.build(ctx), None
    check_latent_grid(cfg, autoencoder)
    t, aug = cfg.training, cfg.data.augment
    train_part = plan.splits.autoencoder_train  # never validation's held-out images
    opt = torch.optim.AdamW(autoencoder.parameters(), lr=t.autoencoder_lr)
    loader, gen = shuffled(torch.utils.data.TensorDataset(train_part.images),
                           t.autoencoder_batch_size, t.seed)
    objective, opt, loader = prepare(acc, AutoencoderObjective(autoencoder), opt, loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, t.autoencoder_steps))
    batches = Batches(loader, gen)
    modules = {"autoencoder": autoencoder}
    first = 0
    if checkpoint is not None:
        first = run.checkpointing.restore(checkpoint, modules, opt, sched, batches)["step"]
    objective.train()
    with run.bar(t.autoencoder_steps, "stage 1: autoencoder", first) as bar:
        for step in range(first, t.autoencoder_steps):
            (images,) = next(batches)
            if aug.active:  # the global RNG: its state is in every checkpoint
                images = datasets.augment(images, aug.translate, aug.hflip)
            with acc.autocast():
                loss, logs = objective(images)
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % 50 == 0 or step == t.autoencoder_steps - 1:
                run.log(stage="autoencoder", step=step, loss=loss.item(), **logs)
            if run.checkpointing.due(step + 1, t.autoencoder_steps):
                run.checkpointing.save("autoencoder", step + 1, modules, opt, sched, batches)
    if sharding.is_sharded(autoencoder):  # every process encodes and decodes with it
        autoencoder = sharding.plain_copy(autoencoder, lambda: comp.build(config, ctx),
                                          device=acc.device)
    return autoencoder.eval(), comp, config, scaling


def check_latent_grid(cfg, autoencoder: nn.Module) -> None:
    size, f = cfg.data.image_size, autoencoder.downsample
    if size % f:
        raise UdiffError(f"data.image_size={size} must be a multiple of the autoencoder's "
                         f"downsampling factor {f}")


def score_autoencoder(run: Services, autoencoder: nn.Module, splits: datasets.Splits) -> dict:
    """PSNR/SSIM of the autoencoder on the images stage 1 never saw (all, if none held out)."""
    held = splits.autoencoder_held
    r = reconstruction(autoencoder, (held or splits.train).images) | {"held_out": held is not None}
    run.log(stage="autoencoder_eval", step=run.cfg.training.autoencoder_steps, **r)
    say(f"autoencoder: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f} on {r['images']} "
        f"{'held-out' if r['held_out'] else 'training'} images")
    return r


def cache_latents(run: Services, source, autoencoder: nn.Module, comp, config,
                  scaling: float | None) -> tuple[float, tuple, nn.Module]:
    """The source's latents, cached by the main process with the autoencoder (and the scaling
    factor it settles); the others read both once they are written. A frozen given autoencoder
    then takes --base-precision: the latents and its file stay fp32, stage 2 and sampling hold
    it stored smaller. -> (scaling, tensors, the autoencoder as stage 2 holds it)."""
    cfg = run.cfg
    precision = cfg.training.base_precision if frozen_autoencoder(cfg) else "fp32"
    extra = {} if precision == "fp32" else {"base_precision": precision}
    if run.main:
        scaling, tensors = source.prepare(run.out, run.accelerator.device, autoencoder, scaling)
        save_component(run.out / "autoencoder", comp, config, autoencoder,
                       scaling_factor=scaling, from_run=cfg.autoencoder.from_run, **extra)
    run.accelerator.wait_for_everyone()
    if not run.main:
        scaling = component_of(run.out / "autoencoder", "autoencoder")[2]["scaling_factor"]
        tensors = source.read(run.out)
    return scaling, tensors, (autoencoder if precision == "fp32" else
                              quantize.frozen_autoencoder(autoencoder, precision))


def train_denoiser(run: Services, stack, name: str, tensors: tuple, checkpoint: Path | None,
                   validation: Validation | None = None) -> dict:
    """Stage 2: train ``stack``'s denoiser and conditioner in place; they end holding the EMA
    weights (with --early-stop: the best validated ones). Returns the parameters the optimizer
    trained and all of them, the steps run, the early stop's summary and the time this start
    spent stepping and validating (run.json).
    ``tensors``: (latents ``[N, c, h, w]``, labels ``[N]``, each latent's own noise or None)."""
    cfg, acc, t = run.cfg, run.accelerator, run.cfg.training
    denoiser, conditioner = stack.denoiser, stack.conditioner
    training = DenoiserTraining(acc, denoiser, conditioner, stack.scheduler, t, name)
    stopping = EarlyStopping(t.early_stop_metric, t.early_stop, run.out, run.main) \
        if t.early_stop else None
    tensors = tuple(x for x in tensors if x is not None)
    loader, gen = shuffled(torch.utils.data.TensorDataset(*tensors), t.batch_size, t.seed + 2)
    batches = Batches(acc.prepare(loader), gen, training.draws.streams)
    modules = {"denoiser": denoiser, "conditioner": conditioner}
    if checkpoint is not None:
        state = run.checkpointing.restore(checkpoint, modules, training.optimizer,
                                          training.lr_scheduler, batches, training.ema)
        training.steps, training.nonfinite = state["step"], state["nonfinite"]
        if stopping:
            stopping.load_state(state.get("early_stop"))
    first, start, validating = training.steps, time.perf_counter(), 0.0
    with run.bar(t.max_steps, f"stage 2: {cfg.denoiser.name}", training.steps) as bar:
        while training.steps < t.max_steps:
            loss = training.step(*next(batches))
            if loss is None:
                continue  # accumulating micro-batches, or a skipped non-finite step
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}")
            if training.steps % 50 == 0 or training.steps == t.max_steps:
                run.log(stage="denoiser", step=training.steps, loss=loss,
                        lr=training.lr_scheduler.get_last_lr()[0],
                        skipped_nonfinite=training.skipped)
            began = time.perf_counter()
            stop = validate(run, training, validation, stopping)
            validating += time.perf_counter() - began
            if stop:
                stopping.stop(training.steps)
                break
            if run.checkpointing.due(training.steps, t.max_steps, final=True):
                run.checkpointing.save("denoiser", training.steps, modules, training.optimizer,
                                       training.lr_scheduler, batches, training.ema,
                                       {"nonfinite": training.nonfinite} | (
                                           {"early_stop": stopping.state()} if stopping else {}))
    elapsed = time.perf_counter() - start
    training.finish()
    if stopping and run.main:
        stopping.restore_best(training.params)
    return {"parameters": {"trainable": sum(p.numel() for p in training.params),
                           "total": sum(p.numel() for p in training.model.parameters())},
            "steps": training.steps, "early_stop": stopping.summary() if stopping else None,
            # this start's share (a resumed run: the steps after the checkpoint)
            "timing": {"steps": training.steps - first,
                       "step_seconds": round(elapsed - validating, 2),
                       "validation_seconds": round(validating, 2)}}


def validate(run: Services, training: DenoiserTraining, validation: Validation | None,
             stopping: EarlyStopping | None) -> bool:
    """Validate when due (the main process; every process of a sharded run) and log the row;
    -> whether early stopping ends stage 2 here, the same answer on every process."""
    t, steps = run.cfg.training, training.steps
    if not t.validate_every or not (steps % t.validate_every == 0 or steps == t.max_steps):
        return False
    row = validation(training) if validation else None
    if row is not None:
        run.log(stage="validation", step=steps, **row)
    if stopping is None:
        return False
    weights = training.ema.shadow if training.ema is not None else training.params
    stop = stopping.update(row, steps, weights) if row is not None else False
    flag = torch.tensor([float(stop)], device=run.accelerator.device)
    return bool(run.accelerator.reduce(flag, reduction="sum").item() > 0) and steps < t.max_steps
