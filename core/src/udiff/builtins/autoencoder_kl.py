"""The ``kl`` autoencoder: diffusers' AutoencoderKL, trained in stage 1 or loaded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from .autoencoders import KLConfig


class KLAutoencoder(nn.Module):
    """``encode``: images ``[B, C, H, W]`` in [-1, 1] -> latents ``[B, c, H/f, W/f]`` (posterior
    mode, unscaled); ``decode`` inverts it; ``loss`` is the stage-1 objective."""

    def __init__(self, config: KLConfig, image_channels: int) -> None:
        super().__init__()
        self.vae = AutoencoderKL(**config.blocks(image_channels))
        self.kl_weight = config.kl_weight
        self.latent_channels = config.latent_channels
        self.downsample = 2 ** (len(config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mode()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample

    def diffusers_model(self) -> AutoencoderKL:
        return self.vae

    def to_diffusers(self, scaling_factor: float) -> AutoencoderKL:
        self.vae.register_to_config(scaling_factor=scaling_factor)
        return self.vae

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        rec = reconstruction_loss(recon, images)
        kl = posterior.kl().mean() / images[0].numel()
        return rec + self.kl_weight * kl, {"rec": rec.item(), "kl": kl.item()}


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(recon, images) + F.mse_loss(recon, images)



def build(config: KLConfig, context) -> KLAutoencoder:
    return KLAutoencoder(config, context.image_channels)
