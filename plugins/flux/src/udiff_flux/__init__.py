"""udiff-flux: the Flux transformer (diffusers' FluxTransformer2DModel) as a udiff backbone."""

from udiff import hookimpl

from .model import PRESETS, FluxConfig, FluxDenoiser
from .pretrained import read_diffusers


@hookimpl
def register_denoisers(register):
    register("flux", FluxConfig, FluxDenoiser, PRESETS, default_scheduler="flow",
             init_formats={"diffusers FluxTransformer2DModel folder": read_diffusers},
             lora_targets={"attention": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                         "add_k_proj", "add_v_proj", "to_add_out"],
                           "mlp": ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                                   "ff_context.net.2", "proj_mlp"]})
