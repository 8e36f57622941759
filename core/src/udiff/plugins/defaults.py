"""The defaults that depend on a run's objective family, in one place: which scheduler a backbone
trains with, which sampler and guidance scale sample it, which training options the demo uses."""

from __future__ import annotations

from typing import Any

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
