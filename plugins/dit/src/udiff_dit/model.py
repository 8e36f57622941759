"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers"), after facebookresearch/DiT.

Patchify -> fixed 2-D sine-cosine position embedding -> adaLN-Zero transformer blocks -> final
adaLN layer -> unpatchify. The class embedding lives in udiff's label conditioner: its pooled
output is added to the timestep embedding exactly as DiT adds its LabelEmbedder output.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from timm.layers import Attention, Mlp, PatchEmbed
from torch import nn
from torch.utils.checkpoint import checkpoint

from udiff import Conditioning, Context

from .config import DiTConfig


def modulate(x, shift, scale):  # x: [B, N, D]; shift, scale: [B, D]
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps [B] -> [B, D]: sinusoidal frequencies (cos first) then a 2-layer MLP.

    Frequencies are exp(-ln(1e4) * i / (half - shift)): shift 1 is diffusers' convention for DiT
    (``downscale_freq_shift=1``, what the export runs), shift 0 facebookresearch/DiT's. The
    weights are the same either way; the outputs are not, so the config records which."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, shift: int = 1) -> None:
        super().__init__()
        self.frequency_size, self.shift = frequency_size, shift
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        i = torch.arange(half, device=t.device)  # [half]
        freqs = torch.exp(-math.log(10_000) * i / (half - self.shift))  # [half]
        args = t.float()[:, None] * freqs[None]  # [B, half]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))  # [B, D]


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated (adaLN-Zero) by the condition c."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)  # fused SDPA
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio),
                       act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x: [B, N, D], c: [B, D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).chunk(6, dim=1))
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # -> [B, N, p*p*C]
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def sincos_pos_embed(dim: int, grid: int) -> np.ndarray:
    """[grid*grid, dim] fixed 2-D sine-cosine embedding: first half from the column (x)
    coordinate, second half from the row (y), as DiT/MAE and diffusers lay it out."""

    def axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10_000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    x, y = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([axis(dim // 2, x), axis(dim // 2, y)], axis=1)


class DiT(nn.Module):
    """``forward(x [B, C, H, W], t [B], cond) -> [B, C (x2 if learn_sigma), H, W]``."""

    _no_split_modules = ["DiTBlock"]  # FSDP shards block by block (diffusers' convention)

    def __init__(self, config: DiTConfig, context: Context) -> None:
        super().__init__()
        size, channels = context.latent_size or 32, context.latent_channels or 4
        if size % config.patch_size or config.hidden_size % config.num_heads:
            raise ValueError(f"latent size {size} must be a multiple of patch_size "
                             f"{config.patch_size}, hidden_size a multiple of num_heads")
        self.in_channels, self.patch_size = channels, config.patch_size
        self.out_channels = channels * 2 if config.learn_sigma else channels
        self.cond_dim = config.hidden_size
        self.timestep_convention = config.timestep_convention
        self.x_embedder = PatchEmbed(size, config.patch_size, channels, config.hidden_size,
                                     bias=True, strict_img_size=False)
        self.t_embedder = TimestepEmbedder(
            config.hidden_size, shift=int(config.timestep_convention == "diffusers"))
        n = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, n, config.hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(config.hidden_size, config.num_heads,
                                             config.mlp_ratio) for _ in range(config.depth))
        self.final_layer = FinalLayer(config.hidden_size, config.patch_size, self.out_channels)
        self.gradient_checkpointing = False
        if not self.pos_embed.is_meta:
            self.initialize_weights()

    def initialize_weights(self) -> None:
        def xavier(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(xavier)
        grid = int(self.x_embedder.num_patches ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(
            sincos_pos_embed(self.pos_embed.shape[-1], grid)).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data  # patch embedding initialised like nn.Linear
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, p*p*C] -> [B, C, H, W]
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning):
        x = self.x_embedder(x) + self.pos_embed  # [B, N, D], N = H*W / p^2
        c = self.t_embedder(timesteps) + cond.pooled  # [B, D]
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))

    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    def to_diffusers(self, conditioner):
        """(diffusers model, subfolder, pipeline class) for ``udiff export --format diffusers``."""
        from .export import to_diffusers

        return to_diffusers(self, conditioner), "transformer", "DiTPipeline"
