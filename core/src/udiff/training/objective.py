"""The training objective, whatever the backbone and scheduler: the modules as one forward pass
(so DDP/FSDP see it), the step's shared random draws, and the loss the scheduler defines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UdiffError
from ..weights import sharding


class AutoencoderObjective(nn.Module):
    """Stage 1's loss as a forward pass, so DDP (which syncs gradients of what went through its
    forward) sees it."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self._no_split_modules = sharding.units(autoencoder)  # FSDP units: its blocks

    def forward(self, images: torch.Tensor):
        return self.autoencoder.loss(images)


class Denoising(nn.Module):
    """Conditioner + denoiser as one module: one DDP wrapper, one forward.
    ``(noisy [B, c, h, w], timesteps [B], labels [B]) -> prediction [B, c, h, w]``.

    ``name`` names the denoiser in the one-line error a wrongly shaped prediction gets."""

    def __init__(self, denoiser: nn.Module, conditioner: nn.Module, name: str = "") -> None:
        super().__init__()
        self.denoiser, self.conditioner = denoiser, conditioner
        self.name = name or type(denoiser).__name__
        # FSDP units: the backbone's blocks, and denoiser and conditioner each whole, so that
        # validation can call them directly (their forward gathers their shards).
        self._no_split_modules = [*sharding.units(denoiser, conditioner),
                                  type(denoiser).__name__, type(conditioner).__name__]

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor):
        out = self.denoiser(noisy, timesteps, self.conditioner(labels))
        check_prediction(out, noisy, self.name)
        c = noisy.shape[1]  # learned-variance backbones return 2c channels: keep the prediction
        return out if out.shape[1] == c else out[:, :c].contiguous()  # a copy, not a view (FSDP)


def check_prediction(out, noisy: torch.Tensor, name: str) -> None:
    """A prediction must be shaped like the latents (2c channels: a learned variance)."""
    shape = tuple(getattr(out, "shape", ()))
    b, c, *rest = noisy.shape
    if len(shape) != noisy.ndim or shape[0] != b or list(shape[2:]) != rest or shape[1] not in (
            c, 2 * c):
        raise UdiffError(f"{name}: forward returned a prediction of shape {list(shape)}; expected "
                         f"{list(noisy.shape)} (the latents' shape; or {2 * c} channels)")


class Draws:
    """The per-sample randomness of a training step — noise, noise levels, label dropout — drawn
    for the whole global batch on every process from shared generators, each process keeping its
    own rows. N processes x batch B therefore draw exactly what one process x batch N*B draws:
    data parallelism changes the order of the arithmetic, never the samples.

    Noise comes from a generator on the training device (no host-to-device copy of the largest
    tensor); noise levels and dropout from a CPU one."""

    def __init__(self, seed: int | None = None, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if seed is None:  # follow the global RNG (single-process helpers and tests)
            seed = int(torch.randint(2**62, (1,)))
        self.cpu = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)
        self.noise = torch.Generator(self.device).manual_seed(seed + 1)
        self.rank, self.world = rank, world

    @property
    def streams(self) -> dict[str, torch.Generator]:
        return {"draws": self.cpu, "draws_noise": self.noise}

    def mine(self, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        b = len(like)
        return full[self.rank * b:(self.rank + 1) * b].to(like.device)

    def normal(self, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        full = torch.randn((len(like) * self.world, *shape), generator=self.noise,
                           device=self.device)
        return self.mine(full, like).to(like.dtype)

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        return self.mine(torch.rand(len(like) * self.world, generator=self.cpu), like)

    def timesteps(self, scheduler, like: torch.Tensor) -> torch.Tensor:
        full = scheduler.sample_timesteps(len(like) * self.world, "cpu", generator=self.cpu)
        return self.mine(full, like)


def objective_loss(model: nn.Module, scheduler, x0: torch.Tensor, y: torch.Tensor,
                   offset_noise: float = 0.0, draws: Draws | None = None,
                   null_label: int | None = None, label_dropout: float = 0.0,
                   noise: torch.Tensor | None = None):
    """Objective-agnostic: the scheduler supplies timesteps, noisy input and target; ``model`` is a
    :class:`Denoising`. Labels are replaced by ``null_label`` with probability ``label_dropout``
    (classifier-free guidance). ``noise`` ``[B, c, h, w]``: the batch's own noise (distillation
    pairs: the noise the teacher started from) instead of a fresh draw."""
    draws = draws or Draws(device=x0.device)
    if noise is None:
        noise = draws.normal(x0, x0.shape[1:])
    if offset_noise:  # a constant per sample and channel: lets the model shift mean brightness
        noise = noise + offset_noise * draws.normal(x0, (x0.shape[1], *[1] * (x0.ndim - 2)))
    ts = draws.timesteps(scheduler, x0)
    if label_dropout > 0:
        y = torch.where(draws.uniform(y) < label_dropout, torch.full_like(y, null_label), y)
    return denoising_loss(model, scheduler, x0, y, noise, ts)


def denoising_loss(model: nn.Module, scheduler, x0: torch.Tensor, y: torch.Tensor,
                   noise: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The scheduler's weighted MSE at given noise ``[B, c, h, w]`` and timesteps ``[B]``
    (validation fixes both, so its held-out loss does not vary between validations)."""
    pred = model(scheduler.add_noise(x0, noise, ts), ts, y)
    target = scheduler.target(x0, noise, ts)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(
        dim=tuple(range(1, x0.ndim)))  # [B]
    weight = scheduler.loss_weight(ts)
    if weight is not None:
        per_sample = per_sample * weight
    return per_sample.mean()
