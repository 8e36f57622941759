"""``--init-from`` for the UNet: a diffusers ``UNet2DConditionModel`` folder (e.g. a Stable
Diffusion repo's ``unet/``). The conditioner's token width follows its ``cross_attention_dim``."""

from __future__ import annotations

from udiff.errors import UdiffError
from udiff.weights.pretrained import diffusers_files


def read_diffusers(path, config, context) -> dict:
    cfg, state = diffusers_files(path, ("UNet2DConditionModel",))
    for key in ("in_channels", "out_channels"):
        if cfg.get(key, 4) != context.latent_channels:
            raise UdiffError(f"--init-from {path}: the UNet's {key} is {cfg.get(key, 4)}, the "
                             f"autoencoder's latents have {context.latent_channels} channels")
    for key in ("attention_head_dim", "layers_per_block"):
        if not isinstance(cfg.get(key, 1), int):
            raise UdiffError(f"--init-from {path}: per-level {key} {cfg[key]} is not udiff's UNet "
                             "layout")
    pooled = cfg.get("class_embed_type") == "projection"
    options = {
        "block_out_channels": cfg["block_out_channels"],
        "layers_per_block": cfg.get("layers_per_block", 2),
        "attention_levels": [t.startswith("CrossAttn") for t in cfg["down_block_types"]],
        "cross_attention_dim": cfg["cross_attention_dim"],
        "attention_head_dim": cfg.get("attention_head_dim", 8),
        "norm_num_groups": cfg.get("norm_num_groups", 32), "pooled_conditioning": pooled,
    }
    return {"options": options, "state": {f"unet.{k}": v for k, v in state.items()}}
