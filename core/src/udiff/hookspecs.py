"""The four roles a udiff plugin can fill, one hook each.

Every hook receives a ``register`` callback (as in simonw/llm's ``register_models``)::

    register(name, config_model, factory, presets=None, **meta)

``config_model`` is a pydantic v2 model (``extra="forbid"``) describing the component's options,
``factory(config, context)`` builds it, ``presets`` maps preset names to option overrides.
"""

from collections.abc import Callable

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("udiff")
hookimpl = HookimplMarker("udiff")

Register = Callable[..., None]


@hookspec
def register_autoencoders(register: Register) -> None:
    """Register autoencoders: ``factory(config, context) -> nn.Module`` with
    ``encode(images) -> latents`` (a sample of the posterior), ``decode(latents) -> images``,
    ``loss(images) -> (loss, logs)`` for stage 1, and ``latent_channels`` / ``downsample``."""


@hookspec
def register_denoisers(register: Register) -> None:
    """Register denoisers: ``factory(config, context) -> nn.Module`` whose
    ``forward(noisy_latents, timesteps, conditioning)`` returns a prediction shaped like the latents.
    ``context`` is a :class:`udiff.components.Context`; the module exposes ``cond_dim`` (and
    optionally ``pooled_dim``), the conditioning widths it takes."""


@hookspec
def register_schedulers(register: Register) -> None:
    """Register schedulers: ``factory(config, context) -> udiff.schedulers.Scheduler`` (training
    side: timesteps, noising, target; sampling side: ``set_timesteps``, ``step``)."""


@hookspec
def register_conditioners(register: Register) -> None:
    """Register conditioners: ``factory(config, context) -> nn.Module`` mapping labels ``[B]`` to a
    :class:`udiff.components.Conditioning` (tokens ``[B, L, D]``, pooled ``[B, D]``), with
    ``null(batch)`` (the unconditional labels) and ``dropout`` (the rate at which the training
    loop swaps labels for the null one)."""
