"""udiff-flux: the Flux transformer (diffusers' FluxTransformer2DModel) as a udiff backbone.

Registering imports only the config (no torch, no diffusers): the model and the weight reader are
named as ``"module:attribute"`` and imported when a Flux model is first built or read.
"""

from udiff import hookimpl

from .config import PRESETS, FluxConfig

__all__ = ["PRESETS", "FluxConfig", "FluxDenoiser"]


@hookimpl
def register_denoisers(register):
    register("flux", FluxConfig, "udiff_flux.model:FluxDenoiser", PRESETS, default_scheduler="flow",
             init_formats={"diffusers FluxTransformer2DModel folder":
                           "udiff_flux.pretrained:read_diffusers"},
             lora_targets={"attention": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                         "add_k_proj", "add_v_proj", "to_add_out"],
                           "mlp": ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                                   "ff_context.net.2", "proj_mlp"]})


def __getattr__(name):  # `from udiff_flux import FluxDenoiser` still works, imported on use
    if name == "FluxDenoiser":
        from .model import FluxDenoiser

        return FluxDenoiser
    raise AttributeError(f"module 'udiff_flux' has no attribute {name!r}")
