"""Built-in ``kl`` autoencoder: diffusers' AutoencoderKL, trained in stage 1 or loaded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from udiff.hookspecs import hookimpl


class LayoutConfig(BaseModel):
    """The encoder/decoder layout diffusers' AutoencoderKL and VQModel share."""

    model_config = ConfigDict(extra="forbid")

    block_out_channels: list[int] = Field([32, 64], min_length=1, description="Channels per "
                                          "resolution; each level after the first halves the size.")
    layers_per_block: int = Field(1, ge=1, description="ResNet layers per level.")
    latent_channels: int = Field(4, ge=1, description="Channels of the latent space.")
    norm_num_groups: int = Field(16, ge=1, description="GroupNorm groups (divides every width).")

    @model_validator(mode="after")
    def _groups_divide(self):
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every entry of "
                             f"block_out_channels (not {bad})")
        return self

    @classmethod
    def layout_of(cls, config: dict, down_block: str = "DownEncoderBlock2D") -> dict:
        """The layout options of a diffusers autoencoder config (``--autoencoder-from``)."""
        kinds = set(config.get("down_block_types", [])) | set(config.get("up_block_types", []))
        if kinds - {down_block, down_block.replace("Down", "Up").replace("Encoder", "Decoder")}:
            raise ValueError(f"block types {sorted(kinds)} are not udiff's layout")
        return {k: config[k] for k in ("block_out_channels", "layers_per_block", "latent_channels",
                                       "norm_num_groups") if k in config}

    def blocks(self, image_channels: int) -> dict:
        """Constructor arguments of the diffusers model."""
        levels = len(self.block_out_channels)
        return dict(in_channels=image_channels, out_channels=image_channels,
                    down_block_types=("DownEncoderBlock2D",) * levels,
                    up_block_types=("UpDecoderBlock2D",) * levels,
                    block_out_channels=tuple(self.block_out_channels),
                    layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
                    norm_num_groups=self.norm_num_groups)


class KLConfig(LayoutConfig):
    kl_weight: float = Field(1e-6, ge=0, description="Weight of the KL term in the stage-1 loss.")


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


PRESETS = {
    # kl_weight 1e-4 keeps the latent space smooth enough for a small denoiser to land in it.
    "tiny": {"block_out_channels": [16, 32], "norm_num_groups": 8, "kl_weight": 1e-4},
    "small": {"block_out_channels": [64, 128], "layers_per_block": 2, "norm_num_groups": 32},
    # Stable Diffusion's VAE layout (8x downsampling, 4 latent channels).
    "sd": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
           "norm_num_groups": 32},
}


@hookimpl(trylast=True)
def register_autoencoders(register):
    register("kl", KLConfig, lambda config, context: KLAutoencoder(config, context.image_channels),
             PRESETS, diffusers_class="AutoencoderKL", from_diffusers_config=KLConfig.layout_of)
