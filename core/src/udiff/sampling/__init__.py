"""The sampling layer: how to sample (:mod:`.spec`, no torch), a run loaded as a
:class:`Pipeline` (``udiff.load``), and its export to other libraries' formats (:mod:`.export`)."""

__all__ = ["Pipeline", "SamplingSpec", "load"]


def __getattr__(name: str):  # lazy: `udiff.sampling.spec` (the CLI's help) imports no torch
    if name in ("Pipeline", "load"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "SamplingSpec":
        from .spec import SamplingSpec

        return SamplingSpec
    raise AttributeError(name)
