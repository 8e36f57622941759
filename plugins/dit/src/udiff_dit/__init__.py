"""udiff-dit: the DiT denoiser (facebookresearch/DiT) as a udiff backbone."""

from udiff import hookimpl

from .model import PRESETS, DiT, DiTConfig
from .pretrained import read_diffusers, read_official


@hookimpl
def register_denoisers(register):
    register("dit", DiTConfig, DiT, PRESETS, default_scheduler="ddpm",
             init_formats={"facebookresearch/DiT state dict": read_official,
                           "diffusers DiTTransformer2DModel folder": read_diffusers},
             lora_targets={"attention": ["attn.qkv", "attn.proj"], "mlp": ["mlp.fc1", "mlp.fc2"]})
