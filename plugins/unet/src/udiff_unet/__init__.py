"""udiff-unet: diffusers' UNet2DConditionModel as a udiff denoiser."""

from udiff import hookimpl

from .model import PRESETS, UNetConfig, UNetDenoiser
from .pretrained import read_diffusers


@hookimpl
def register_denoisers(register):
    register("unet", UNetConfig, UNetDenoiser.from_config, PRESETS, default_scheduler="ddpm",
             init_formats={"diffusers UNet2DConditionModel folder": read_diffusers},
             lora_targets={"attention": ["to_q", "to_k", "to_v", "to_out.0"],
                           "mlp": ["ff.net.0.proj", "ff.net.2"]})
