"""The Flux denoiser: latents packed into 2x2 patch tokens, labels as the text stream.

diffusers' ``FluxTransformer2DModel`` runs joint attention over [text tokens; image tokens] in its
double-stream blocks, then over the concatenation in its single-stream blocks; rotary position
embedding takes 3 axes per token (0 for text, (0, row, col) for image patches).
"""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from udiff import Conditioning, Context

PATCH = 2  # Flux packs 2x2 latent pixels into one token


class FluxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_layers: int = Field(2, ge=0, description="Double-stream (MMDiT) blocks.")
    num_single_layers: int = Field(4, ge=0, description="Single-stream blocks.")
    num_attention_heads: int = Field(4, ge=1, description="Attention heads.")
    attention_head_dim: int = Field(32, ge=2, description="Width per head; hidden = heads x this.")
    axes_dims_rope: tuple[int, int, int] = Field((8, 12, 12), description="Rotary dims per axis "
                                                 "(index, row, col); must sum to the head width.")
    joint_attention_dim: int = Field(128, ge=1, description="Width D of the conditioning tokens "
                                     "(the text stream).")
    pooled_projection_dim: int | None = Field(None, ge=1, description="Width of the pooled "
                                              "conditioning; None = joint_attention_dim.")
    guidance_embeds: bool = Field(False, description="Guidance-distilled embedding (FLUX.1-dev); "
                                  "udiff trains with true classifier-free guidance, so it is fed "
                                  "the constant `embedded_guidance`.")
    embedded_guidance: float = Field(1.0, ge=0, description="Value fed to the guidance embedding.")

    @model_validator(mode="after")
    def _check(self):
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(f"axes_dims_rope {tuple(self.axes_dims_rope)} must sum to "
                             f"attention_head_dim={self.attention_head_dim}")
        if any(d % 2 for d in self.axes_dims_rope):
            raise ValueError("axes_dims_rope entries must be even (rotary pairs)")
        return self


PRESETS = {
    "tiny": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2,
             "attention_head_dim": 16, "axes_dims_rope": (4, 6, 6), "joint_attention_dim": 32},
    # The digits demo's size (README): 16 tokens of width 128.
    "small": {"num_layers": 2, "num_single_layers": 4, "num_attention_heads": 4,
              "attention_head_dim": 32, "axes_dims_rope": (8, 12, 12), "joint_attention_dim": 128},
    # The benchmark harness's matched size: ~6.2 M, like unet/dit `bench` (within 10%).
    "bench": {"num_layers": 2, "num_single_layers": 1, "num_attention_heads": 4,
              "attention_head_dim": 64, "axes_dims_rope": (16, 24, 24), "joint_attention_dim": 256},
    # DiT-XL/2-sized Flux (709 M at 32x32x4 latents; DiT-XL/2: 675 M), for the GPU benchmark.
    "xl": {"num_layers": 8, "num_single_layers": 16, "num_attention_heads": 16,
           "attention_head_dim": 72, "axes_dims_rope": (8, 32, 32), "joint_attention_dim": 1152},
    # FLUX.1-dev's transformer: 11,901,408,320 parameters with its 16-channel VAE latents.
    "dev": {"num_layers": 19, "num_single_layers": 38, "num_attention_heads": 24,
            "attention_head_dim": 128, "axes_dims_rope": (16, 56, 56),
            "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
            "embedded_guidance": 3.5},
}


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
