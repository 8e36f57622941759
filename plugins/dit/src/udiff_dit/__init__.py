"""udiff-dit: the DiT denoiser (facebookresearch/DiT) as a udiff backbone."""

from udiff import hookimpl

from .model import PRESETS, DiT, DiTConfig


@hookimpl
def register_denoisers(register):
    register("dit", DiTConfig, DiT, PRESETS, default_scheduler="ddpm")
