"""Built-in schedulers: ``ddpm``, ``ddim``, ``dpm++`` (noise prediction, one training side, three
diffusers samplers) and ``flow`` (rectified flow, Euler sampling): configs and registration. The
implementations live in :mod:`.noise_schedulers` and :mod:`.flow_scheduler`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from udiff.hookspecs import hookimpl

NOISE_SAMPLERS = {"ddpm": "ddpm", "ddim": "ddim", "dpm++": "dpm_pp"}  # name -> factory attribute


class NoiseScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_train_timesteps: int = Field(1000, ge=2, description="Diffusion steps of the forward process.")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
        "linear", description="Noise schedule (DDPM's linear by default).")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="First beta of the schedule.")
    beta_end: float = Field(0.02, gt=0, lt=1, description="Last beta of the schedule.")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field(
        "epsilon", description="What the denoiser predicts: the noise, v (Salimans & Ho) or x0.")
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR-gamma loss weighting (Hang "
                                    "et al. 2023; 5 is their choice); None = plain mean.")


class FlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_train_timesteps: int = Field(1000, ge=2, description="Scale of the timestep the denoiser "
                                     "sees (t = noise level x this).")
    timestep_sampling: Literal["logit_normal", "uniform"] = Field(
        "logit_normal", description="Training noise levels: sigmoid(N(mean, std)) as in SD3, or "
        "uniform.")
    logit_mean: float = Field(0.0, description="Mean of the logit-normal.")
    logit_std: float = Field(1.0, gt=0, description="Standard deviation of the logit-normal.")
    shift: float = Field(1.0, gt=0, description="Noise-level shift s' = k s / (1 + (k - 1) s); "
                         "> 1 spends more steps at high noise (SD3 uses 3).")
    resolution_shift: bool = Field(False, description="Derive the shift from the latent size as "
                                   "Flux does (exp of 0.5..1.15 over 256..4096 2x2 tokens); "
                                   "overrides `shift`.")



@hookimpl(trylast=True)
def register_schedulers(register):
    for name, attr in NOISE_SAMPLERS.items():
        register(name, NoiseScheduleConfig, f"udiff.builtins.noise_schedulers:{attr}",
                 family="noise", stochastic=name == "ddpm")  # DDPM adds noise at each step
    register("flow", FlowConfig, "udiff.builtins.flow_scheduler:build", family="flow")
    # udiff distill's students: K evenly spaced deterministic steps (DDIM "trailing" samples
    # noise-family students, v-prediction, on the same spacing).
    register("few-step", FlowConfig, "udiff.builtins.flow_scheduler:few_step", family="flow")
