"""udiff: a pluggable latent-diffusion toolkit (host package of ``udiff-core``).

Importing ``udiff`` is light (no torch): plugins import ``udiff.hookimpl`` to register, and the
CLI answers ``--help`` and ``plugins`` without loading a model library. ``load`` and ``Pipeline``
are imported on first use.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("udiff-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

from .context import Conditioning, Context  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402

__all__ = ["Conditioning", "Context", "Pipeline", "__version__", "hookimpl", "load"]


def __getattr__(name: str):
    if name in ("load", "Pipeline"):
        from . import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module 'udiff' has no attribute {name!r}")
