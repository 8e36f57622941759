"""The ``flow`` scheduler: rectified flow (flow matching), sampled with diffusers'
``FlowMatchEulerDiscreteScheduler``.

Training interpolates linearly between data and noise, ``x_t = (1 - s) x0 + s eps`` for a noise
level ``s`` in (0, 1), and the denoiser predicts the velocity ``eps - x0`` (SD3 / Flux). The
denoiser sees ``t = s * num_train_timesteps``, the same 0..1000 scale as the noise schedulers, so
any backbone trains with either objective.
"""

from __future__ import annotations

import math

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from udiff.scheduler_base import Scheduler

from .schedulers import FlowConfig

# Flux's resolution rule: log-shift linear in the number of 2x2 latent tokens.
BASE_SEQ, MAX_SEQ, BASE_SHIFT, MAX_SHIFT = 256, 4096, 0.5, 1.15


def shift_for(config: FlowConfig, context) -> float:
    if not config.resolution_shift:
        return config.shift
    size = getattr(context, "latent_size", 0)
    if not size:
        raise ValueError("resolution_shift needs the latent size")
    seq = (size // 2) ** 2
    mu = BASE_SHIFT + (MAX_SHIFT - BASE_SHIFT) * (seq - BASE_SEQ) / (MAX_SEQ - BASE_SEQ)
    return math.exp(mu)


class FlowScheduler(Scheduler):
    def __init__(self, config: FlowConfig, context=None) -> None:
        self.shift = shift_for(config, context)
        super().__init__(config, FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=config.num_train_timesteps, shift=self.shift))

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timesteps.float() / self.config.num_train_timesteps

    def sample_timesteps(self, n, device, generator=None):
        c = self.config
        if c.timestep_sampling == "uniform":
            s = torch.rand(n, generator=generator)
        else:
            s = torch.sigmoid(c.logit_mean + c.logit_std * torch.randn(n, generator=generator))
        s = self.shift * s / (1 + (self.shift - 1) * s)
        return (s * c.num_train_timesteps).to(device)  # [B] float in (0, T)

    def add_noise(self, latents, noise, timesteps):
        s = self.sigmas(timesteps).view(-1, *[1] * (latents.ndim - 1)).to(latents.dtype)
        return (1 - s) * latents + s * noise

    def target(self, latents, noise, timesteps):
        return noise - latents  # the velocity d x_t / d s

    def scale_model_input(self, sample, t):
        return sample  # the flow-matching sampler has no input scaling


class FewStepFlowScheduler(FlowScheduler):
    """Euler on K evenly spaced noise levels 1, (K-1)/K, ..., 1/K, ending at 0: the schedule a
    distilled student is trained on (``udiff distill``). diffusers' default spacing for K = 2 is
    [1, 0.001]: its second step would do nothing."""

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        sigmas = [1 - i / num_inference_steps for i in range(num_inference_steps)]  # [K]
        self.sampler.set_timesteps(sigmas=sigmas, device=device)


def build(config: FlowConfig, context) -> FlowScheduler:
    return FlowScheduler(config, context)


def few_step(config: FlowConfig, context) -> FewStepFlowScheduler:
    return FewStepFlowScheduler(config, context)
