"""The sampling layer: a run loaded as a :class:`Pipeline` (``udiff.load``), and its export to
other libraries' formats (:mod:`.export`)."""

from .pipeline import Pipeline, load

__all__ = ["Pipeline", "load"]
