"""udiff-unet: diffusers' UNet2DConditionModel as a udiff denoiser."""

from udiff import hookimpl

from .model import PRESETS, UNetConfig, UNetDenoiser


@hookimpl
def register_denoisers(register):
    register("unet", UNetConfig, UNetDenoiser.from_config, PRESETS, default_scheduler="ddpm")
