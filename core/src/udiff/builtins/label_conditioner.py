"""The ``label`` conditioner: one embedding per label plus a null label for guidance."""

from __future__ import annotations

import torch
from torch import nn

from udiff.context import Conditioning

from .conditioners import LabelConfig


class LabelConditioner(nn.Module):
    def __init__(self, num_labels: int, dim: int, tokens: int = 1, dropout: float = 0.1,
                 pooled_dim: int = 0) -> None:
        super().__init__()
        self.num_labels, self.dim, self.tokens, self.dropout = num_labels, dim, tokens, dropout
        self.null_label = num_labels  # the extra, last row
        self.embedding = nn.Embedding(num_labels + 1, dim * tokens)
        nn.init.normal_(self.embedding.weight, std=0.02)
        # A denoiser whose pooled input is narrower than its tokens (Flux: 768 vs 4096, CLIP vs
        # T5 in the original) gets a second table, as it had a second text encoder.
        self.pooled_embedding = None
        if pooled_dim and pooled_dim != dim:
            self.pooled_embedding = nn.Embedding(num_labels + 1, pooled_dim)
            nn.init.normal_(self.pooled_embedding.weight, std=0.02)

    def forward(self, labels: torch.Tensor) -> Conditioning:  # labels: [B] long
        tokens = self.embedding(labels).view(-1, self.tokens, self.dim)  # [B, L, D]
        if self.pooled_embedding is not None:
            return Conditioning(tokens=tokens, pooled=self.pooled_embedding(labels))  # [B, P]
        return Conditioning(tokens=tokens, pooled=tokens.mean(dim=1))  # pooled: [B, D]

    def null(self, batch: int, device=None) -> torch.Tensor:
        return torch.full((batch,), self.null_label, dtype=torch.long, device=device)


def build(config: LabelConfig, context) -> LabelConditioner:
    dim = config.dim or context.cond_dim
    return LabelConditioner(context.num_labels, dim, config.tokens, config.dropout,
                            getattr(context, "pooled_dim", 0))
