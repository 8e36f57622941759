"""The training layer: one loop for every backbone (:class:`Trainer`, :func:`train`)."""

from .trainer import Trainer, train

__all__ = ["Trainer", "train"]
