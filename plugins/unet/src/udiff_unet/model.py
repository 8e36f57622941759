"""The UNet denoiser: self-attention + cross-attention over the conditioner's tokens."""

from __future__ import annotations

from diffusers import UNet2DConditionModel
from torch import nn

from udiff import Conditioning, Context

from .config import UNetConfig


class UNetDenoiser(nn.Module):
    """``forward(x [B, c, h, w], t [B], cond) -> [B, c, h, w]``."""

    def __init__(self, config: UNetConfig, context: Context) -> None:
        super().__init__()
        n = len(config.block_out_channels)
        levels = config.attention_levels or ([True] * (n - 1) + [False] if n > 1 else [True])
        pooled = {"class_embed_type": "projection",
                  "projection_class_embeddings_input_dim": config.cross_attention_dim}
        self.unet = UNet2DConditionModel(
            sample_size=context.latent_size or 64,
            in_channels=context.latent_channels or 4, out_channels=context.latent_channels or 4,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D"
                                 for a in reversed(levels)),
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            cross_attention_dim=config.cross_attention_dim,
            attention_head_dim=config.attention_head_dim, norm_num_groups=config.norm_num_groups,
            **(pooled if config.pooled_conditioning else {}),
        )
        self.cond_dim = config.cross_attention_dim
        self.pooled = config.pooled_conditioning

    @classmethod
    def from_config(cls, config: UNetConfig, context: Context) -> UNetDenoiser:
        return cls(config, context)

    def forward(self, x, timesteps, cond: Conditioning):
        return self.unet(x, timesteps, encoder_hidden_states=cond.tokens,
                         class_labels=cond.pooled if self.pooled else None).sample

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def to_diffusers(self, conditioner):
        """The UNet2DConditionModel itself; no stock pipeline takes label embeddings."""
        return self.unet, "unet", None
