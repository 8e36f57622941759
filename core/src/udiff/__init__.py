"""udiff: a pluggable latent-diffusion toolkit (host package of ``udiff-core``).

Importing ``udiff`` is light (no torch): plugins import ``udiff.hookimpl`` to register, and the
CLI answers ``--help`` and ``plugins`` without loading a model library. ``load`` and ``Pipeline``
are imported on first use.
"""

from .context import Conditioning, Context
from .hookspecs import hookimpl
from .version import __version__

__all__ = ["Conditioning", "Context", "Pipeline", "__version__", "hookimpl", "load"]


def __getattr__(name: str):
    if name in ("load", "Pipeline"):
        from . import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module 'udiff' has no attribute {name!r}")
