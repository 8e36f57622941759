"""A frozen ``--autoencoder-from`` autoencoder stored at ``--base-precision`` (issue 32): its
weight bytes against fp32 and one decode's relative L2 error against the fp32 decode, for the
layout the tests train with and Stable Diffusion's VAE layout (built without downloading; random
initialised weights, not trained ones).

    python benchmarks/lowmem_autoencoder.py --out benchmarks/results/lowmem-DATE
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from udiff.builtins.autoencoder_kl import KLAutoencoder
from udiff.builtins.autoencoders import KL_PRESETS, KLConfig
from udiff.weights import quantize

LAYOUTS = {  # name: (config, image channels, latent side)
    "test layout": (KLConfig(block_out_channels=[16, 32], norm_num_groups=8), 1, 8),
    "sd": (KLConfig(**KL_PRESETS["sd"]), 3, 16),
}


def cpu() -> tuple[str, list[str]]:
    """The CPU's model name and the vector flags that set its speed (Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor(), []
    field = lambda key: next((x.split(":", 1)[1].strip() for x in lines  # noqa: E731
                              if x.startswith(key)), "")
    have = set(field("flags").split())
    return field("model name"), [f for f in ("avx2", "avx512f", "fma", "avx512_bf16", "amx_bf16")
                                 if f in have]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    results = {}
    for name, (cfg, channels, side) in LAYOUTS.items():
        for precision in ("int8", "fp8", "bf16"):
            torch.manual_seed(0)
            module = KLAutoencoder(cfg, channels).eval()
            z = torch.randn(1, cfg.latent_channels, side, side)  # [1, c, h, w]
            with torch.no_grad():
                want = module.decode(z)  # [1, C, H, W]
            full = quantize.weight_bytes(module)
            quantize.frozen_autoencoder(module, precision)
            with torch.no_grad():
                got = module.decode(z)
            results[f"{name} {precision}"] = {
                "fp32_mib": round(full / 2**20, 1),
                "bytes_ratio": round(quantize.weight_bytes(module) / full, 4),
                "decode_rel_err": round(((got - want).norm() / want.norm()).item(), 5)}
            print(name, precision, results[f"{name} {precision}"], flush=True)
    model, flags = cpu()
    machine = {"cpu": model, "cores": torch.get_num_threads(), "flags": flags,
               "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoencoder.json").write_text(json.dumps(
        {"what": __doc__.split("\n\n")[0], "machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
