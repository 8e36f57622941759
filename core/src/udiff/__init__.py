"""udiff: a pluggable latent-diffusion toolkit (host package of ``udiff-core``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("udiff-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

from .components import Conditioning, Context  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .sampling import Pipeline, load  # noqa: E402

__all__ = ["Conditioning", "Context", "Pipeline", "__version__", "hookimpl", "load"]
