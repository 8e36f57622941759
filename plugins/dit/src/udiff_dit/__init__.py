"""udiff-dit: the DiT denoiser (facebookresearch/DiT) as a udiff backbone.

Registering imports only the config (no torch, no timm): the model and the weight readers are
named as ``"module:attribute"`` and imported when a DiT is first built or read.
"""

from udiff import hookimpl

from .config import PRESETS, DiTConfig

__all__ = ["PRESETS", "DiT", "DiTConfig"]


@hookimpl
def register_denoisers(register):
    register("dit", DiTConfig, "udiff_dit.model:DiT", PRESETS, default_scheduler="flow",
             init_formats={"facebookresearch/DiT state dict": "udiff_dit.pretrained:read_official",
                           "diffusers DiTTransformer2DModel folder":
                           "udiff_dit.pretrained:read_diffusers"},
             lora_targets={"attention": ["attn.qkv", "attn.proj"], "mlp": ["mlp.fc1", "mlp.fc2"]})


def __getattr__(name):  # `from udiff_dit import DiT` still works, imported on use
    if name == "DiT":
        from .model import DiT

        return DiT
    raise AttributeError(f"module 'udiff_dit' has no attribute {name!r}")
