"""The UNet's options and presets (imported when the plugin registers; no torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class UNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block_out_channels: list[int] = Field([64, 128], min_length=1, description="Channels per "
                                          "resolution level.")
    layers_per_block: int = Field(1, ge=1, description="ResNet (+attention) layers per level.")
    attention_levels: list[bool] | None = Field(None, description="Cross-attention per level; "
                                                "default: every level but the lowest-resolution.")
    cross_attention_dim: int = Field(128, ge=1, description="Width D of the conditioning tokens.")
    attention_head_dim: int = Field(8, ge=1, description="Heads per attention layer (diffusers' "
                                    "historical naming).")
    norm_num_groups: int = Field(32, ge=1, description="GroupNorm groups.")
    pooled_conditioning: bool = Field(True, description="Also add the pooled conditioning to the "
                                      "timestep embedding (stronger label control).")

    @model_validator(mode="after")
    def _check(self):
        if self.attention_levels is not None and len(self.attention_levels) != len(
                self.block_out_channels):
            raise ValueError("attention_levels needs one entry per block_out_channels entry")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide {bad}")
        return self


PRESETS = {
    "tiny": {"block_out_channels": [32, 64], "cross_attention_dim": 64, "norm_num_groups": 16},
    # The digits demo's size: fits the 300 s CPU budget (README).
    "small": {"block_out_channels": [48, 96], "cross_attention_dim": 96, "norm_num_groups": 16},
    # The benchmark harness's matched size: ~6.0 M, like dit/flux `bench` (within 10%).
    "bench": {"block_out_channels": [64, 128, 128], "cross_attention_dim": 128},
    # Stable Diffusion 1.5's UNet: 859,520,964 parameters.
    "sd15": {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
             "attention_levels": [True, True, True, False], "cross_attention_dim": 768,
             "attention_head_dim": 8, "norm_num_groups": 32, "pooled_conditioning": False},
}
