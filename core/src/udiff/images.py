"""Tensors <-> PIL images and sample grids."""

from __future__ import annotations

import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[N, C, H, W]`` in [-1, 1] -> PIL images (L or RGB)."""
    arr = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def grid(images: torch.Tensor, rows: int, min_side: int = 48) -> Image.Image:
    """A grid with ``rows`` rows (one per label), small images upscaled (nearest) for viewing."""
    pils = to_pil(images)
    cols = -(-len(pils) // rows)
    w, h = pils[0].size
    scale = max(1, min_side // max(w, h))
    w, h, pad = w * scale, h * scale, 2
    sheet = Image.new(pils[0].mode, (cols * (w + pad) + pad, rows * (h + pad) + pad), 255)
    for i, im in enumerate(pils):
        r, c = divmod(i, cols)
        sheet.paste(im.resize((w, h), Image.Resampling.NEAREST), (pad + c * (w + pad),
                                                                  pad + r * (h + pad)))
    return sheet
