"""Types shared by the host and plugins: what a factory is given and what a conditioner returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .errors import UdiffError


@dataclass
class Conditioning:
    """A conditioner's output: ``tokens`` ``[B, L, D]`` for cross/joint attention and ``pooled``
    ``[B, P]`` for adding to the timestep embedding (P = D unless the denoiser asks otherwise)."""

    tokens: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.pooled.shape[0]


@dataclass(frozen=True)
class Context:
    """What the host knows when it builds a component; unknown fields are 0.

    image: ``[C=image_channels, image_size, image_size]``; latent: ``[latent_channels,
    latent_size, latent_size]``; ``cond_dim`` is the token width D the denoiser asked for (its
    ``cond_dim`` attribute), ``pooled_dim`` the pooled width P (its optional ``pooled_dim``;
    0 = D)."""

    image_channels: int = 0
    image_size: int = 0
    latent_channels: int = 0
    latent_size: int = 0
    num_labels: int = 0
    cond_dim: int = 0
    pooled_dim: int = 0

    def replace(self, **fields) -> Context:
        return dataclasses.replace(self, **fields)

    def for_denoiser(self, denoiser) -> Context:
        """This context with the conditioning widths ``denoiser`` takes (for its conditioner)."""
        dims = {k: getattr(denoiser, k, 0) for k in ("cond_dim", "pooled_dim")}
        if not isinstance(dims["cond_dim"], int) or dims["cond_dim"] <= 0:
            raise UdiffError(f"denoiser {type(denoiser).__name__} does not expose a positive int "
                             "`cond_dim` attribute")
        if not isinstance(dims["pooled_dim"], int):
            raise UdiffError(f"denoiser {type(denoiser).__name__}: `pooled_dim` must be an int")
        return self.replace(**dims)
