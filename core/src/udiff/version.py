"""The installed udiff-core version (recorded in every run and plugin listing)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("udiff-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
