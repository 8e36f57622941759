"""Built-in autoencoders ``kl`` (diffusers' AutoencoderKL) and ``vq`` (diffusers' VQModel):
their configs, presets and registration. The models live in :mod:`.autoencoder_kl` and
:mod:`.autoencoder_vq`, imported when one is built."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class VQConfig(LayoutConfig):
    num_vq_embeddings: int = Field(256, ge=2, description="Codebook size.")

    @classmethod
    def from_diffusers(cls, config: dict) -> dict:
        if config.get("vq_embed_dim") not in (None, config.get("latent_channels")):
            raise ValueError("vq_embed_dim differs from latent_channels: not udiff's layout")
        return cls.layout_of(config) | {"num_vq_embeddings": config.get("num_vq_embeddings", 256)}


KL_PRESETS = {
    # kl_weight 1e-4 keeps the latent space smooth enough for a small denoiser to land in it.
    "tiny": {"block_out_channels": [16, 32], "norm_num_groups": 8, "kl_weight": 1e-4},
    "small": {"block_out_channels": [64, 128], "layers_per_block": 2, "norm_num_groups": 32},
    # tiny with one more downsampling (4x, 8x): 8x8 latents at 32 and 64 px (`udiff train`'s plan)
    "tiny4": {"block_out_channels": [16, 32, 32], "norm_num_groups": 8, "kl_weight": 1e-4},
    "tiny8": {"block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8, "kl_weight": 1e-4},
    # Stable Diffusion's VAE layout (8x downsampling, 4 latent channels).
    "sd": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
           "norm_num_groups": 32},
}


VQ_PRESETS = {
    "tiny": {"block_out_channels": [16, 32], "norm_num_groups": 8},
    "small": {"block_out_channels": [64, 128], "layers_per_block": 2, "norm_num_groups": 32},
}



@hookimpl(trylast=True)
def register_autoencoders(register):
    register("kl", KLConfig, "udiff.builtins.autoencoder_kl:build", KL_PRESETS,
             diffusers_class="AutoencoderKL", from_diffusers_config=KLConfig.layout_of)
    register("vq", VQConfig, "udiff.builtins.autoencoder_vq:build", VQ_PRESETS,
             diffusers_class="VQModel", from_diffusers_config=VQConfig.from_diffusers)
