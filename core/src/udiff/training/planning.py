"""``udiff train --data DIR``: defaults chosen from the data (``udiff data``'s report) and from
measurement, each with its reason. They sit under the user's config file and flags: anything the
user gives wins. The embedded digits keep the config's own defaults (what the demo measured).

The rules:
- image size: the largest power of two not above the median short side, within [16, 64] on CPU
  ([16, 256] with a GPU) -- never upscaled, and a size a 2-core machine trains in minutes;
- channels: 1 when every image is greyscale, else 3;
- autoencoder: ``kl`` with the downsampling that gives 8x8 latents (16x16 with a GPU): the
  digits demo's latent grid, where every backbone met its targets;
- stage lengths from the number of training images at the demo's batch 48: 8 epochs of stage 1
  (the demo's 300 steps on 1,797 digits) and 60 of stage 2 (the font set's validation FID
  stopped improving between 45 and 67 epochs; the demo's 21 fit its 300 s budget), within bounds;
- the demo's measured optimizer (lr 2e-3, 50 warm-up steps, EMA 0.995) and preset (small);
- validation four times and at the end, 8 samples per label, on the held-out 10%.
The objective and sampling are the backbone's defaults (rectified flow, Euler 20, CFG 1.5 in
[0.2, 0.8]: docs/your-data.md, "Defaults from measurement")."""

from __future__ import annotations

import math
from typing import Any

from ..config import TrainConfig
from ..plugins import get

DEMO_BATCH = 48
# field -> (epochs, (fewest, most steps), why)
EPOCHS = {"autoencoder_steps": (8, (200, 3000), "the digits demo's"),
          "max_steps": (60, (400, 8000), "where the font set's validation FID levels off")}
LATENT_SIDE = {"cpu": 8, "cuda": 16}
MAX_SIDE = {"cpu": 64, "cuda": 256}
DOWNSAMPLING = {2: "tiny", 4: "tiny4", 8: "tiny8"}  # kl presets by factor
GREY = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def lookup(values: dict, path: str) -> Any:
    for name in path.split("."):
        if not isinstance(values, dict) or name not in values:
            return None
        values = values[name]
    return values


def put(values: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        values = values.setdefault(name, {})
    values[leaf] = value


def choose(report: dict, given: dict, device: str) -> tuple[dict, list[tuple[str, str, str]]]:
    """-> (config defaults, rows of (field, value, reason)) for the fields ``given`` (the
    user's file and flags, nested) leaves open. ``device``: "cpu" or "cuda"."""
    defaults: dict = {}
    rows: list[tuple[str, str, str]] = []

    def pick(path: str, value: Any, reason: str) -> Any:
        mine = lookup(given, path)
        if mine is not None:
            rows.append((path, str(mine), "yours"))
            return mine
        put(defaults, path, value)
        rows.append((path, str(value), reason))
        return value

    side = report["short_side_median"]
    top = MAX_SIDE[device]
    size = max(16, min(top, 2 ** int(math.log2(max(side, 1)))))
    size = pick("data.image_size", size, f"largest power of two <= the median short side "
                f"({side:g} px), within 16..{top} on {device.upper()}")
    grey = set(report["modes"]) <= GREY
    pick("data.channels", 1 if grey else 3,
         "every image is greyscale" if grey else f"colour images ({'/'.join(report['modes'])})")
    if lookup(given, "autoencoder.from_run") is None and lookup(given, "autoencoder.pretrained") is None:
        factor = min(DOWNSAMPLING, key=lambda f: abs(size // f - LATENT_SIDE[device]))
        pick("autoencoder.preset", DOWNSAMPLING[factor],
             f"{factor}x downsampling: {size // factor}x{size // factor} latents (the demo's "
             f"{LATENT_SIDE[device]}x{LATENT_SIDE[device]} on {device.upper()})")
    backbone = lookup(given, "denoiser.name") or "unet"
    if "small" in get("denoiser", backbone).presets:
        pick("denoiser.preset", "small", "the digits demo's preset: every target met in 300 s")
    holdout = lookup(given, "training.holdout")
    holdout = TrainConfig().training.holdout if holdout is None else holdout
    batch = pick("training.batch_size", DEMO_BATCH, "the digits demo's batch")
    train_images = round(report["images"] * (1 - holdout))
    steps = {}
    for field, (epochs, (lo, hi), why) in EPOCHS.items():
        n = max(lo, min(hi, round(epochs * train_images / int(batch) / 50) * 50))
        steps[field] = int(pick(f"training.{field}", n, f"{epochs} epochs ({why}) of "
                                f"{train_images:,} training images at batch {batch}, within "
                                f"{lo}..{hi}"))
    for field, value in (("lr", 2e-3), ("warmup_steps", 50), ("ema_decay", 0.995)):
        pick(f"training.{field}", value, "the digits demo's measured optimizer")
    every = max(50, steps["max_steps"] // 4 // 50 * 50)
    pick("training.validate_every", every, "four validations and one at the end, on the "
         f"held-out {holdout:.0%} of each label")
    pick("training.validate_per_label", 8, "samples per label for each validation's "
         "accuracy and FID")
    return defaults, rows


def table(rows: list[tuple[str, str, str]]) -> list[str]:
    """The plan as aligned lines, one per field."""
    width = max(len(f) for f, _, _ in rows)
    vwidth = max(len(v) for _, v, _ in rows)
    return [f"  {f:<{width}}  {v:<{vwidth}}  {why}" for f, v, why in rows]
