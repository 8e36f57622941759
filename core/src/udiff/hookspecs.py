"""The four roles a udiff plugin can fill, one hook each, and a fifth hook for CLI commands.

Every hook receives a ``register`` callback (as in simonw/llm's ``register_models``)::

    register(name, config_model, factory, presets=None, **meta)

``config_model`` is a pydantic v2 model (``extra="forbid"``) describing the component's options,
``factory(config, context)`` builds it (a callable, or ``"module:attribute"`` imported when the
component is first built, so registering stays light), ``presets`` maps preset names to option
overrides, and ``meta`` holds the role's typed keys (:mod:`udiff.plugins.contract`): an unknown
or mistyped key disables the plugin with a one-line error.
"""

from collections.abc import Callable

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("udiff")
hookimpl = HookimplMarker("udiff")

Register = Callable[..., None]


@hookspec
def register_autoencoders(register: Register) -> None:
    """Register autoencoders: ``factory(config, context) -> nn.Module`` meeting
    :class:`udiff.plugins.contract.Autoencoder`; meta :class:`~udiff.plugins.contract.AutoencoderMeta`."""


@hookspec
def register_denoisers(register: Register) -> None:
    """Register denoisers: ``factory(config, context) -> nn.Module`` meeting
    :class:`udiff.plugins.contract.Denoiser`; meta :class:`~udiff.plugins.contract.DenoiserMeta`."""


@hookspec
def register_schedulers(register: Register) -> None:
    """Register schedulers: ``factory(config, context) -> udiff.scheduler_base.Scheduler``; meta
    :class:`~udiff.plugins.contract.SchedulerMeta` (its objective ``family``)."""


@hookspec
def register_conditioners(register: Register) -> None:
    """Register conditioners: ``factory(config, context) -> nn.Module`` meeting
    :class:`udiff.plugins.contract.Conditioner`; no meta keys."""


@hookspec
def register_commands(register: Callable[[object], None]) -> None:
    """Register CLI commands: ``register(command)``, where ``command`` (a module or any object)
    has ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``, as udiff's own
    commands do (simonw/llm's ``register_commands``). Import heavy libraries inside ``main``:
    ``udiff --help`` builds every parser without torch."""
