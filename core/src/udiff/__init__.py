"""udiff: a pluggable latent-diffusion toolkit (host package of ``udiff-core``).

Importing ``udiff`` is light (no torch): plugins import ``udiff.hookimpl`` to register, and the
CLI answers ``--help`` and ``plugins`` without loading a model library. ``load`` and ``Pipeline``
are imported on first use.
"""

import logging

from .context import Conditioning, Context
from .hookspecs import hookimpl
from .version import __version__

# The lowmem extra's libraries log on import (diffusers imports bitsandbytes whenever it is
# installed): "Failed to load CPU gemm_4bit_forward" (an optional kernel package), "No CUDA
# runtime is found" (torch's extension builder, from optimum-quanto). Neither concerns udiff.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

__all__ = ["Conditioning", "Context", "Pipeline", "__version__", "hookimpl", "load"]


def __getattr__(name: str):
    if name in ("load", "Pipeline"):
        from . import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module 'udiff' has no attribute {name!r}")
