"""The one assembly of a stack, for training, sampling, ``udiff info``, the conformance check and
the benchmark: autoencoder -> latent shape -> denoiser -> the conditioning widths it takes ->
conditioner, and the scheduler on the final context.

Each role is given as a *maker* ``context -> object``: a component to build from its config
(:class:`Part`), a saved folder to load (``udiff.run.directory``), or an object already built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ..config import ComponentChoice, TrainConfig
from ..context import Context
from . import get
from .registry import Component

Make = Callable[[Context], Any]


@dataclass(frozen=True)
class Part:
    """A resolved component and its validated config: what to build, and what a run saves."""

    component: Component
    config: BaseModel

    @classmethod
    def of(cls, role: str, choice) -> Part:
        """From a config choice (``name``, ``preset``, ``options``); errors name the field."""
        comp = get(role, choice.name)
        return cls(comp, comp.make_config(choice.preset, choice.options))

    def build(self, context: Context) -> Any:
        return self.component.build(self.config, context)


@dataclass
class Stack:
    context: Context  # latent shape and conditioning widths known: the conditioner's
    denoiser_context: Context  # what the denoiser was built with (widths 0)
    denoiser: Any
    conditioner: Any
    scheduler: Any = None
    autoencoder: Any = None


def assemble(context: Context, denoiser: Make, conditioner: Make, scheduler: Make | None = None,
             autoencoder: Any = None) -> Stack:
    """Build the stack in the only order that works; ``autoencoder`` (built) sets the latent
    shape, else ``context`` must already hold it."""
    if autoencoder is not None:
        context = context.with_latents(autoencoder)
    den = denoiser(context)
    full = context.for_denoiser(den)
    return Stack(full, context, den, conditioner(full),
                 scheduler(full) if scheduler is not None else None, autoencoder)


def from_choices(context: Context, denoiser, conditioner, scheduler=None,
                 autoencoder=None) -> Stack:
    """:func:`assemble` from config choices (the autoencoder's too, built first)."""
    ae = Part.of("autoencoder", autoencoder).build(context) if autoencoder is not None else None
    return assemble(context, Part.of("denoiser", denoiser).build,
                    Part.of("conditioner", conditioner).build,
                    Part.of("scheduler", scheduler).build if scheduler is not None else None, ae)


def scheduler_choice(cfg: TrainConfig) -> ComponentChoice:
    """The run's scheduler (its objective): the config's, else the one its backbone trains with."""
    return cfg.scheduler or ComponentChoice(name=training_scheduler(cfg.denoiser.name))


def training_scheduler(backbone: str) -> str:
    """The scheduler (objective) ``backbone`` trains with when the run names none."""
    return get("denoiser", backbone).meta.default_scheduler


def family(scheduler: str) -> str:
    """The objective family of ``scheduler`` (samplers of one family are interchangeable)."""
    return get("scheduler", scheduler).meta.family
