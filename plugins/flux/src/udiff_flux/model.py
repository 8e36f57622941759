"""The Flux denoiser: latents packed into 2x2 patch tokens, labels as the text stream.

diffusers' ``FluxTransformer2DModel`` runs joint attention over [text tokens; image tokens] in its
double-stream blocks, then over the concatenation in its single-stream blocks; rotary position
embedding takes 3 axes per token (0 for text, (0, row, col) for image patches).
"""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from udiff import Conditioning, Context

from .config import PATCH, FluxConfig


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C], channel-major within a patch (FluxPipeline's order)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack`: [B, (H/2)(W/2), 4C] -> [B, C, H, W]."""
    b, _, d = x.shape
    c = d // (PATCH * PATCH)
    x = x.view(b, h // PATCH, w // PATCH, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(h: int, w: int, device=None) -> torch.Tensor:
    """Rotary positions of the packed tokens: [(H/2)(W/2), 3] = (0, row, col)."""
    rows, cols = torch.meshgrid(torch.arange(h // PATCH), torch.arange(w // PATCH), indexing="ij")
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=torch.float32)


class FluxDenoiser(nn.Module):
    """``forward(x [B, c, h, w], t [B] on the 0..1000 scale, cond) -> [B, c, h, w]``."""

    def __init__(self, config: FluxConfig, context: Context) -> None:
        super().__init__()
        size = context.latent_size
        if size and size % PATCH:
            raise ValueError(f"latent size {size} must be even: Flux packs 2x2 latent patches")
        channels = context.latent_channels or 16
        self.transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=channels * PATCH * PATCH,
            num_layers=config.num_layers, num_single_layers=config.num_single_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.joint_attention_dim,
            pooled_projection_dim=config.pooled_projection_dim or config.joint_attention_dim,
            guidance_embeds=config.guidance_embeds, axes_dims_rope=tuple(config.axes_dims_rope),
        )
        self.cond_dim = config.joint_attention_dim
        self.pooled_dim = config.pooled_projection_dim or config.joint_attention_dim
        self.embedded_guidance = config.embedded_guidance if config.guidance_embeds else None

    def forward(self, x, timesteps, cond: Conditioning):
        b, _, h, w = x.shape
        tokens = cond.tokens  # [B, L, D]
        guidance = None
        if self.embedded_guidance is not None:
            guidance = torch.full((b,), self.embedded_guidance, device=x.device)
        out = self.transformer(
            hidden_states=pack(x), encoder_hidden_states=tokens, pooled_projections=cond.pooled,
            timestep=timesteps.float() / 1000,  # diffusers' Flux takes the noise level in [0, 1]
            img_ids=image_ids(h, w, x.device),
            txt_ids=torch.zeros(tokens.shape[1], 3, device=x.device), guidance=guidance,
        ).sample  # [B, (h/2)(w/2), 4c]
        return unpack(out, h, w)

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def to_diffusers(self, conditioner):
        """The FluxTransformer2DModel itself: FluxPipeline needs CLIP and T5 text encoders."""
        return self.transformer, "transformer", None
