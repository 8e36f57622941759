"""The noise-prediction schedulers ``ddpm``, ``ddim`` and ``dpm++`` (diffusers).

All three share one training side (DDPM forward process; epsilon, v or sample target; optional
min-SNR-gamma weighting); they differ only in how they sample, so a run trained with any of them can
be sampled with any other.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from udiff.scheduler_base import Scheduler

from .schedulers import NoiseScheduleConfig


class NoiseScheduler(Scheduler):
    def __init__(self, config: NoiseScheduleConfig, sampler_cls, **sampler_kwargs) -> None:
        common = config.model_dump(exclude={"snr_gamma"})  # a training-side option only
        # clip_sample would clip *latents* to [-1, 1]: wrong for latent diffusion.
        extra = {"clip_sample": False} if sampler_cls in (DDPMScheduler, DDIMScheduler) else {}
        super().__init__(config, sampler_cls(**common, **extra, **sampler_kwargs))
        self._train = DDPMScheduler(**common, clip_sample=False)

    def sample_timesteps(self, n, device, generator=None):
        return torch.randint(0, self.config.num_train_timesteps, (n,), generator=generator,
                             device="cpu").to(device)

    def add_noise(self, latents, noise, timesteps):
        return self._train.add_noise(latents, noise, timesteps)

    def target(self, latents, noise, timesteps):
        kind = self.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return latents
        return self._train.get_velocity(latents, noise, timesteps)

    def loss_weight(self, timesteps):
        """Min-SNR-gamma: ``min(SNR, gamma)`` expressed for the predicted quantity, so every
        prediction type weights the implied x0 error alike (epsilon: /SNR, v: /(SNR + 1))."""
        gamma = self.config.snr_gamma
        if gamma is None:
            return None
        alpha_bar = self._train.alphas_cumprod.to(timesteps.device)[timesteps]
        snr = alpha_bar / (1 - alpha_bar)  # [B]
        clipped = snr.clamp(max=gamma)
        kind = self.config.prediction_type
        return clipped / snr if kind == "epsilon" else clipped / (snr + 1) if kind == "v_prediction" \
            else clipped


SAMPLERS = {
    "ddpm": (DDPMScheduler, {}),
    # DDIM's "leading" spacing never visits t=999 for few steps; "trailing" starts at pure noise.
    "ddim": (DDIMScheduler, {"timestep_spacing": "trailing", "set_alpha_to_one": False}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                            "timestep_spacing": "trailing"}),
}




def _factory(name: str):
    cls, kwargs = SAMPLERS[name]
    return lambda config, context: NoiseScheduler(config, cls, **kwargs)


ddpm, ddim, dpm_pp = (_factory(n) for n in ("ddpm", "ddim", "dpm++"))
