"""What the host hands a component factory (:class:`Context`) and what a conditioner returns
(:class:`Conditioning`). Imports no torch: plugins register without it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UdiffError

if TYPE_CHECKING:
    import torch


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
    """What the host knows when it builds a component; a field not known yet is 0.

    Images are ``[image_channels, image_size, image_size]``; latents ``[latent_channels,
    latent_size, latent_size]`` (known once the autoencoder is built). ``num_labels`` excludes
    the conditioner's null label. ``cond_dim`` is the token width D the denoiser asked for (its
    ``cond_dim`` attribute) and ``pooled_dim`` the pooled width P (its optional ``pooled_dim``;
    0 = D): set for the conditioner, 0 when the denoiser itself is built."""

    image_channels: int = 0
    image_size: int = 0
    latent_channels: int = 0
    latent_size: int = 0
    num_labels: int = 0
    cond_dim: int = 0
    pooled_dim: int = 0

    def replace(self, **fields: Any) -> Context:
        return dataclasses.replace(self, **fields)

    def with_latents(self, autoencoder: Any) -> Context:
        """This context with the latent shape ``autoencoder`` maps its images to."""
        return self.replace(latent_channels=autoencoder.latent_channels,
                            latent_size=self.image_size // autoencoder.downsample)

    def for_denoiser(self, denoiser: Any) -> Context:
        """This context with the conditioning widths ``denoiser`` takes (for its conditioner)."""
        dims = {k: getattr(denoiser, k, 0) for k in ("cond_dim", "pooled_dim")}
        if not isinstance(dims["cond_dim"], int) or dims["cond_dim"] <= 0:
            raise UdiffError(f"denoiser {type(denoiser).__name__} does not expose a positive int "
                             "`cond_dim` attribute")
        if not isinstance(dims["pooled_dim"], int):
            raise UdiffError(f"denoiser {type(denoiser).__name__}: `pooled_dim` must be an int")
        return self.replace(**dims)
