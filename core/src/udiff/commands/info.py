"""``udiff info``: parameters and MACs of a configuration, on the meta device."""

from __future__ import annotations

import json

from . import flags
from .train import add_common, resolve_config

NAME = "info"
HELP = "parameters and MACs of a configuration (meta device: nothing is allocated)"
# What `info` sizes by default: Stable Diffusion's image size and autoencoder.
DEFAULTS = {"data": {"image_size": 256, "channels": 3}, "autoencoder": {"name": "kl", "preset": "sd"}}


def add_arguments(p) -> None:
    add_common(p, flags.COMPONENT_FLAGS, DEFAULTS)
    p.add_argument("--labels", type=int, default=1000, help="number of labels (default: 1000, "
                   "ImageNet's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(args) -> int:
    from ..evaluation.size import describe

    cfg = resolve_config(args, flags.COMPONENT_FLAGS, defaults=DEFAULTS)
    info = describe(cfg, args.labels)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>20}: {v:,}" if isinstance(v, int) else f"{k:>20}: {v}")
    return 0
