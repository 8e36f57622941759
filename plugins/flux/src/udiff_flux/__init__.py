"""udiff-flux: the Flux transformer (diffusers' FluxTransformer2DModel) as a udiff backbone."""

from udiff import hookimpl

from .model import PRESETS, FluxConfig, FluxDenoiser


@hookimpl
def register_denoisers(register):
    register("flux", FluxConfig, FluxDenoiser, PRESETS, default_scheduler="flow")
