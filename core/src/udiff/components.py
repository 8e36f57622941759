"""Types shared by the host and plugins: what a factory is given and what a conditioner returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """A conditioner's output: ``tokens`` ``[B, L, D]`` for cross/joint attention and ``pooled``
    ``[B, D]`` for adding to the timestep embedding."""

    tokens: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.pooled.shape[0]


@dataclass(frozen=True)
class Context:
    """What the host knows when it builds a component; unknown fields are 0.

    image: ``[C=image_channels, image_size, image_size]``; latent: ``[latent_channels,
    latent_size, latent_size]``; ``cond_dim`` is the width D of the conditioning the denoiser
    asked for (its ``cond_dim`` attribute)."""

    image_channels: int = 0
    image_size: int = 0
    latent_channels: int = 0
    latent_size: int = 0
    num_labels: int = 0
    cond_dim: int = 0
