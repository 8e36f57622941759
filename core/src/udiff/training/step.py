"""Stage 2's optimizer step, shared by the trainer's loop and the benchmark harness: what the
benchmark times is exactly what training runs."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from torch import nn

from ..errors import UdiffError
from ..plugins.contract import GradientCheckpointing
from . import objective, optimizers
from .objective import Denoising, Draws
from .setup import prepare, set_attention


class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self, params: list[nn.Parameter], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1 - d)

    @torch.no_grad()
    def copy_to(self, params: list[nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params, strict=True):
            p.copy_(s.to(p.dtype))


class DenoiserTraining:
    """Stage 2's state (modules, the optimizer, warm-up, EMA) and one optimizer step through accelerate.

    The trainer's loop and the benchmark harness both drive :meth:`step`, so what the benchmark
    times is exactly what training runs."""

    def __init__(self, accelerator: Accelerator, denoiser: nn.Module, conditioner: nn.Module,
                 scheduler, t, name: str = "") -> None:
        """``t``: the run's TrainingConfig (lr, warm-up, EMA, clipping, seed, ...); ``name``: the
        denoiser as errors name it (component and plugin)."""
        if t.gradient_checkpointing:
            if not isinstance(denoiser, GradientCheckpointing):
                raise UdiffError(f"{type(denoiser).__name__} has no "
                                 "enable_gradient_checkpointing()")
            denoiser.enable_gradient_checkpointing()
        set_attention(denoiser, t.attention)
        if t.compile:
            denoiser.compile()  # in place: parameter names and state dict keys are unchanged
        self.accelerator, self.scheduler = accelerator, scheduler
        trained = [p for mod in (denoiser, conditioner) for p in mod.parameters()
                   if p.requires_grad]
        opt = optimizers.make(t.optimizer, trained, t.lr, t.weight_decay)
        warm = max(1, t.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        # A DDP-wrapped model shares its parameters with the originals; FSDP replaces them (in
        # the same modules, same order) with sharded ones: read them after prepare.
        self.model, self.optimizer, self.lr_scheduler = prepare(accelerator,
            Denoising(denoiser, conditioner, name), opt, sched)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = EMA(self.params, t.ema_decay) if t.ema_decay > 0 else None
        self.model.train()
        self.draws = Draws(t.seed + 4, accelerator.process_index, accelerator.num_processes,
                           accelerator.device)
        # Classifier-free guidance: the loop drops labels (from the shared draws), not the
        # conditioner, so every process count drops the same ones.
        self.null_label = int(conditioner.null(1)[0])
        self.label_dropout = float(getattr(conditioner, "dropout", 0.0))
        self.steps = 0  # completed optimizer steps
        self.max_nonfinite = t.max_nonfinite
        self.offset_noise = t.offset_noise
        self.nonfinite = 0  # consecutive non-finite losses
        self.skipped = 0  # all skipped steps of this process

    def step(self, x0: torch.Tensor, y: torch.Tensor,
             noise: torch.Tensor | None = None) -> float | None:
        """One micro-batch (``noise``: its own, for distillation pairs); returns the loss when it
        completed an optimizer step, else None (accumulating, or a non-finite loss skipped: no
        update, counted)."""
        acc = self.accelerator
        with acc.accumulate(self.model):
            loss = objective.objective_loss(self.model, self.scheduler, x0, y, self.offset_noise,
                                            self.draws, self.null_label, self.label_dropout,
                                            noise)
            # The mean over processes: all of them skip a step if any loss is not finite.
            global_loss = acc.reduce(loss.detach().clone(), reduction="mean").item()
            if not math.isfinite(global_loss):
                self.optimizer.zero_grad(set_to_none=True)
                self.nonfinite += 1
                self.skipped += 1
                if self.nonfinite >= self.max_nonfinite:
                    raise UdiffError(f"training stopped: {self.nonfinite} consecutive non-finite "
                                     f"losses at step {self.steps} (lower training.lr); the last "
                                     "complete checkpoint is kept")
                return None
            self.nonfinite = 0
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not acc.sync_gradients:
            return None
        self.steps += 1
        if self.ema is not None:
            self.ema.update(self.params, self.steps)
        return global_loss

    def finish(self) -> None:
        """Leave the EMA weights in the modules (what the run saves)."""
        if self.ema is not None:
            self.ema.copy_to(self.params)
