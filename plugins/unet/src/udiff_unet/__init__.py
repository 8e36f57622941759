"""udiff-unet: diffusers' UNet2DConditionModel as a udiff denoiser.

Registering imports only the config (no torch, no diffusers): the model and the weight reader are
named as ``"module:attribute"`` and imported when a UNet is first built or read.
"""

from udiff import hookimpl

from .config import PRESETS, UNetConfig

__all__ = ["PRESETS", "UNetConfig", "UNetDenoiser"]


@hookimpl
def register_denoisers(register):
    register("unet", UNetConfig, "udiff_unet.model:UNetDenoiser.from_config", PRESETS,
             default_scheduler="flow",  # README: rectified flow FID 6.3 vs 28-150 for noise
             init_formats={"diffusers UNet2DConditionModel folder":
                           "udiff_unet.pretrained:read_diffusers"},
             lora_targets={"attention": ["to_q", "to_k", "to_v", "to_out.0"],
                           "mlp": ["ff.net.0.proj", "ff.net.2"]})


def __getattr__(name):  # `from udiff_unet import UNetDenoiser` still works, imported on use
    if name == "UNetDenoiser":
        from .model import UNetDenoiser

        return UNetDenoiser
    raise AttributeError(f"module 'udiff_unet' has no attribute {name!r}")
