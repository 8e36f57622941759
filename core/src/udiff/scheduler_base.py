"""The scheduler contract: one object with a training side and a sampling side.

The training loop only calls ``sample_timesteps``, ``add_noise``, ``target`` and ``loss_weight``;
it never branches on the objective. Sampling delegates to a diffusers scheduler (``set_timesteps``,
``scale_model_input``, ``step``), so the two sides share one noise schedule.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel


class Scheduler:
    """Base class for udiff schedulers. Which runs a sampler may be swapped into is its
    registered ``family`` (meta), not an attribute here."""

    def __init__(self, config: BaseModel, sampler) -> None:
        self.config = config
        self.sampler = sampler  # a diffusers SchedulerMixin

    # -- training side ---------------------------------------------------------------------
    def sample_timesteps(self, n: int, device, generator: torch.Generator | None = None):
        raise NotImplementedError

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        raise NotImplementedError

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        raise NotImplementedError

    def loss_weight(self, timesteps) -> torch.Tensor | None:
        """Per-sample loss weights ``[B]``, or None for a plain mean."""
        return None

    # -- sampling side ---------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self.sampler.set_timesteps(num_inference_steps, device=device)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.sampler.timesteps

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.sampler, "init_noise_sigma", 1.0))

    def scale_model_input(self, sample: torch.Tensor, t) -> torch.Tensor:
        return self.sampler.scale_model_input(sample, t)

    def step(self, model_output: torch.Tensor, t, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sampler.step(model_output, t, sample, generator=generator).prev_sample
