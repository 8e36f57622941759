"""DiT's options, the paper's variant table and the presets (no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DiTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: int = Field(12, ge=1, description="Number of DiT blocks.")
    hidden_size: int = Field(384, ge=8, description="Token width (also the conditioning width).")
    num_heads: int = Field(6, ge=1, description="Attention heads per block.")
    patch_size: int = Field(2, ge=1, description="Side of the square latent patches.")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP hidden width / token width.")
    learn_sigma: bool = Field(True, description="Also predict the variance (output channels x2), "
                              "as in the paper; udiff trains and samples the mean half.")
    timestep_convention: Literal["diffusers", "official"] = Field(
        "diffusers", description="Sinusoidal timestep frequencies exp(-ln(1e4) i / n): n = half "
        "- 1 (diffusers' DiTTransformer2DModel, what `udiff export` writes) or n = half "
        "(facebookresearch/DiT; set when --init-from reads its state dict).")


# The paper's variant table (facebookresearch/DiT DiT_models): name -> (depth, hidden, heads).
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PRESETS = {f"{name}/{p}": {"depth": d, "hidden_size": h, "num_heads": n, "patch_size": p}
           for name, (d, h, n) in SIZES.items() for p in (2, 4, 8)}
PRESETS["tiny"] = {"depth": 2, "hidden_size": 64, "num_heads": 4, "patch_size": 2}
# The digits demo's size (8x8 latents, one token per latent pixel): 0.993 in 272 s on 2 cores.
PRESETS["small"] = {"depth": 5, "hidden_size": 128, "num_heads": 4, "patch_size": 1}
# The benchmark harness's matched size: ~6.2 M, like unet/flux `bench` (within 10%).
PRESETS["bench"] = {"depth": 5, "hidden_size": 256, "num_heads": 4, "patch_size": 2}
