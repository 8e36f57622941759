"""Size and cost of a configuration, computed on the meta device (no weights are allocated)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import TrainConfig
from ..context import Context
from ..plugins.assembly import from_choices


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_macs(denoiser: torch.nn.Module, conditioner: torch.nn.Module, ctx: Context) -> int:
    """MACs of one denoiser forward at batch 1 (FLOPs / 2 as torch.utils.flop_counter counts
    them); works on the meta device."""
    x = torch.zeros(1, ctx.latent_channels, ctx.latent_size, ctx.latent_size)
    labels = torch.zeros(1, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        denoiser.eval()(x, torch.zeros(1, dtype=torch.long), conditioner.eval()(labels))
    return counter.get_total_flops() // 2


def describe(cfg: TrainConfig, num_labels: int) -> dict:
    """``params`` (denoiser + conditioner), ``denoiser_params`` and ``macs_per_forward``
    (batch 1, one denoiser forward; FLOPs / 2 as torch.utils.flop_counter counts them)."""
    size = cfg.data.image_size
    ctx = Context(image_channels=cfg.data.channels or 3, image_size=size, num_labels=num_labels)

    with torch.device("meta"):
        stack = from_choices(ctx, cfg.denoiser, cfg.conditioner, autoencoder=cfg.autoencoder)
        denoiser, conditioner, ctx = stack.denoiser, stack.conditioner, stack.context
        macs = forward_macs(denoiser, conditioner, ctx)
    dp = count(denoiser)
    return {
        "backbone": cfg.denoiser.name, "preset": cfg.denoiser.preset,
        "image_size": size, "latent_shape": [ctx.latent_channels, ctx.latent_size,
                                             ctx.latent_size],
        "labels": num_labels, "params": dp + count(conditioner), "denoiser_params": dp,
        "conditioner_params": count(conditioner),
        "macs_per_forward": macs,
    }
