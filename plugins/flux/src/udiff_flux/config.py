"""Flux's options and presets (no torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
