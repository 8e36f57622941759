"""``--init-from`` for Flux: a diffusers ``FluxTransformer2DModel`` folder (FLUX.1's
``transformer/`` layout), on latents packed 2x2."""

from __future__ import annotations

from udiff.errors import UdiffError
from udiff.weights.pretrained import diffusers_files

from .model import PATCH


def read_diffusers(path, config, context) -> dict:
    cfg, state = diffusers_files(path, ("FluxTransformer2DModel",))
    want = context.latent_channels * PATCH * PATCH
    if cfg.get("in_channels") != want or cfg.get("patch_size", 1) != 1:
        raise UdiffError(f"--init-from {path}: the transformer takes {cfg.get('in_channels')} "
                         f"packed channels, the autoencoder's latents give {want} (2x2 x "
                         f"{context.latent_channels})")
    options = {k: cfg[k] for k in ("num_layers", "num_single_layers", "num_attention_heads",
                                   "attention_head_dim", "joint_attention_dim",
                                   "pooled_projection_dim", "guidance_embeds") if k in cfg}
    options["axes_dims_rope"] = tuple(cfg.get("axes_dims_rope", (16, 56, 56)))
    return {"options": options, "state": {f"transformer.{k}": v for k, v in state.items()}}
