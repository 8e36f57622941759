"""The defaults that depend on a run's objective family, in one place: which scheduler a backbone
trains with, which sampler and guidance scale sample it, which training options the demo uses."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..config import ComponentChoice, TrainConfig
from . import get

# Sampler and guidance per objective family, measured on the demo models (README): DPM-Solver++
# at CFG 6 for noise prediction; Euler for rectified flow, whose velocity guidance collapses
# diversity at CFG 6, so CFG 2.
SAMPLERS: dict[str, dict[str, Any]] = {"noise": {"scheduler": "dpm++", "guidance": 6.0},
                                       "flow": {"scheduler": "flow", "guidance": 2.0}}
FALLBACK_GUIDANCE = 3.0  # a family udiff has no measured default for

# Training options per family for the demo: min-SNR-5 took the UNet demo from 0.947 to 0.983
# label accuracy at the same steps (README).
QUALITY: dict[str, dict[str, Any]] = {"noise": {"snr_gamma": 5.0}}

# `udiff distill`: student training measured on the demo models (README, "Few-step sampling"):
# 1024 teacher pairs and 400 steps at lr 5e-4 keep distillation under the teacher's training.
DISTILL_TRAINING: dict[str, Any] = {"max_steps": 400, "lr": 5e-4, "warmup_steps": 0}
DISTILL_PAIRS = 1024
# The few-step sampler per family: Euler on evenly spaced sigmas (flow); DDIM "trailing" (noise).
FEW_STEP = {"flow": "few-step", "noise": "ddim"}


def scheduler_choice(cfg: TrainConfig) -> ComponentChoice:
    """The run's scheduler: the config's, else the one its backbone trains with."""
    return cfg.scheduler or ComponentChoice(name=training_scheduler(cfg.denoiser.name))


def training_scheduler(backbone: str) -> str:
    """The scheduler (objective) ``backbone`` trains with when the run names none."""
    return get("denoiser", backbone).meta.default_scheduler


def family(scheduler: str) -> str:
    return get("scheduler", scheduler).meta.family


def sampler(trained_with: str, scheduler: str | None = None,
            guidance: float | None = None) -> tuple[str, float]:
    """(sampler, guidance) for a run trained with ``trained_with``; given values win."""
    default = SAMPLERS.get(family(trained_with),
                           {"scheduler": trained_with, "guidance": FALLBACK_GUIDANCE})
    return scheduler or default["scheduler"], default["guidance"] if guidance is None else guidance


class RunSampling(NamedTuple):
    """How a run samples when a caller does not say: ``udiff sample``/``eval``, ``udiff.load``
    and the server all read it from here."""

    scheduler: str
    steps: int
    guidance: float


def run_sampling(cfg: TrainConfig) -> RunSampling:
    """A distilled student samples as it was distilled (its ``[sampling]``: the few-step
    sampler, K steps, guidance 1); any other run with its family's sampler and guidance (its
    config writes every sampling field, so its guidance there is no choice) at its steps."""
    if cfg.distill is not None:
        return RunSampling(cfg.sampling.scheduler, cfg.sampling.steps, cfg.sampling.guidance)
    name, guidance = sampler(scheduler_choice(cfg).name, cfg.sampling.scheduler)
    return RunSampling(name, cfg.sampling.steps, guidance)
