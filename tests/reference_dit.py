"""facebookresearch/DiT's forward pass, written again for the tests from the paper and the
reference code's parameter names (plain torch: no timm, no udiff), so that udiff's DiT can be
checked against it on the same state dict.

What the reference does and udiff must reproduce: patchify with a strided conv, add fixed
sine-cosine positions, c = timestep embedding (frequencies divided by ``half``, cos first) + the
class embedding (null class last), adaLN-Zero blocks (shift/scale/gate for attention and MLP),
a final adaLN layer, unpatchify.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def frequencies(t: torch.Tensor, dim: int = 256) -> torch.Tensor:  # [B] -> [B, dim]
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32) / half)  # [half]
    args = t.float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def positions(dim: int, grid: int) -> torch.Tensor:  # -> [grid*grid, dim]
    def one_axis(d: int, coords: torch.Tensor) -> torch.Tensor:  # [M] -> [M, d]
        omega = 1.0 / 10_000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        angles = coords.double()[:, None] * omega[None]  # [M, d/2]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    # first half from the column index, second from the row, token order row-major
    return torch.cat([one_axis(dim // 2, cols.flatten()),
                      one_axis(dim // 2, rows.flatten())], dim=1).float()


def shifted(x, shift, scale):  # x: [B, N, D]; shift, scale: [B, D]
    return x * (1 + scale[:, None]) + shift[:, None]


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)  # no affine parameters


def holder(**modules) -> nn.Module:
    m = nn.Module()
    for name, sub in modules.items():
        setattr(m, name, sub)
    return m


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn = holder(qkv=nn.Linear(hidden, 3 * hidden), proj=nn.Linear(hidden, hidden))
        width = int(hidden * mlp_ratio)
        self.mlp = holder(fc1=nn.Linear(hidden, width), fc2=nn.Linear(width, hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def attention(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D]
        b, n, d = x.shape
        qkv = self.attn.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)  # [B, N, 3, H, d/H]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, N, d/H]
        weights = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(-1)  # [B,H,N,N]
        return self.attn.proj((weights @ v).transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)  # each [B, D]
        x = x + g1[:, None] * self.attention(shifted(norm(x), s1, sc1))
        hidden = F.gelu(self.mlp.fc1(shifted(norm(x), s2, sc2)), approximate="tanh")
        return x + g2[:, None] * self.mlp.fc2(hidden)


class ReferenceDiT(nn.Module):
    """``forward(x [B, C, H, W], t [B], y [B]) -> [B, C or 2C, H, W]`` with the reference's names."""

    def __init__(self, channels=4, size=8, patch=2, hidden=64, depth=2, heads=4, mlp_ratio=4.0,
                 classes=10, learn_sigma=True) -> None:
        super().__init__()
        self.patch, self.out = patch, channels * (2 if learn_sigma else 1)
        self.x_embedder = holder(proj=nn.Conv2d(channels, hidden, patch, stride=patch))
        self.t_embedder = holder(mlp=nn.Sequential(nn.Linear(256, hidden), nn.SiLU(),
                                                   nn.Linear(hidden, hidden)))
        self.y_embedder = holder(embedding_table=nn.Embedding(classes + 1, hidden))
        grid = size // patch
        self.pos_embed = nn.Parameter(positions(hidden, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(Block(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final_layer = holder(
            linear=nn.Linear(hidden, patch * patch * self.out),
            adaLN_modulation=nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.patch
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B, N, D]
        c = self.t_embedder.mlp(frequencies(t)) + self.y_embedder.embedding_table(y)  # [B, D]
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = self.final_layer.linear(shifted(norm(x), shift, scale))  # [B, N, p*p*out]
        x = x.reshape(b, h // p, w // p, p, p, self.out)  # [B, h, w, p, p, out]
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, self.out, h, w)
