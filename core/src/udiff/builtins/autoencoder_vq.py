"""Built-in ``vq`` autoencoder: diffusers' VQModel (VQ-GAN's quantised latent space, without the
adversarial loss).

The denoiser works on the continuous pre-quantisation latents (what ``encode`` returns, as in
latent diffusion's VQ-f4 models); ``decode`` snaps them to the codebook first, so sampled latents
are quantised on the way back to pixels.
"""

from __future__ import annotations

import torch
from diffusers import VQModel
from torch import nn

from .autoencoder_kl import reconstruction_loss
from .autoencoders import VQConfig


class VQAutoencoder(nn.Module):
    """``encode``: images ``[B, C, H, W]`` in [-1, 1] -> latents ``[B, c, H/f, W/f]`` (before
    quantisation); ``decode``: quantise, then decode; ``loss``: reconstruction + codebook and
    commitment terms (VectorQuantizer's, beta 0.25)."""

    def __init__(self, config: VQConfig, image_channels: int) -> None:
        super().__init__()
        self.vq = VQModel(**config.blocks(image_channels), num_vq_embeddings=config.num_vq_embeddings)
        self.latent_channels = config.latent_channels
        self.downsample = 2 ** (len(config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(images).latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(latents).sample

    def diffusers_model(self) -> VQModel:
        return self.vq

    def to_diffusers(self, scaling_factor: float) -> VQModel:
        self.vq.register_to_config(scaling_factor=scaling_factor)
        return self.vq

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.vq.decode(self.vq.encode(images).latents)
        rec, commit = reconstruction_loss(out.sample, images), out.commit_loss.mean()
        return rec + commit, {"rec": rec.item(), "commit": commit.item()}



def build(config: VQConfig, context) -> VQAutoencoder:
    return VQAutoencoder(config, context.image_channels)
