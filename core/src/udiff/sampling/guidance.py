"""Classifier-free guidance and its two refinements, on any backbone, objective and sampler:

- a guidance *interval* (Kynkäänniemi et al. 2024): guidance only at noise levels inside
  ``(lo, hi)`` of the normalised timestep ``t / T`` (1 = pure noise); elsewhere the conditional
  prediction alone, which also skips the unconditional half of the batch;
- guidance *rescale* (Lin et al. 2024; diffusers' ``guidance_rescale``): the guided prediction's
  per-sample standard deviation brought back towards the conditional one's, mixed by ``rescale``.
"""

from __future__ import annotations

import torch


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float,
          rescale: float = 0.0) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``, then rescaled: all ``[B, ...]``."""
    out = uncond + scale * (cond - uncond)
    if rescale:
        dims = tuple(range(1, cond.ndim))
        std_cond = cond.std(dim=dims, keepdim=True)  # [B, 1, ...]
        std_out = out.std(dim=dims, keepdim=True)
        out = rescale * out * (std_cond / std_out) + (1 - rescale) * out
    return out


def active(t: torch.Tensor, train_timesteps: int, interval: tuple[float, float] | None) -> bool:
    """Whether guidance applies at timestep ``t`` (always without an interval)."""
    if interval is None:
        return True
    level = float(t) / train_timesteps
    return interval[0] <= level <= interval[1]


def valid_interval(interval: tuple[float, float]) -> bool:
    return 0 <= interval[0] <= interval[1] <= 1


def parse_interval(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` with 0 <= LO <= HI <= 1 (ValueError otherwise); None stays None."""
    if text is None:
        return None
    lo, hi = (float(x) for x in text.split(","))
    if not valid_interval((lo, hi)):
        raise ValueError("needs 0 <= LO <= HI <= 1")
    return lo, hi
