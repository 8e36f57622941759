"""Where stage 2's latents come from, chosen once in preflight: the run's own images encoded by
its autoencoder (:class:`DataLatents`), or a teacher's guided samples with their noise
(:class:`TeacherPairs`, ``udiff distill``). A source supplies the latents (and each one's noise,
if fixed), the denoiser's starting weights and the training timesteps' scheduler; the training
loop never asks which source it has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .. import data as datasets
from ..config import TrainConfig
from ..errors import UdiffError
from ..run.files import atomic_write
from ..run.layout import LATENTS, PAIRS, WEIGHTS
from ..sampling import Pipeline, load
from ..sampling.spec import teacher_spec
from ..weights import lora
from .distill import FewStepTimesteps, teacher_pairs, training_scheduler
from .setup import say

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # latents, labels, noise


class DataLatents:
    """Every image (plus augmented copies) encoded once, scaled to unit variance and cached in
    ``latents.safetensors``; fresh noise each step. ``init``: ``--init-from``'s weights."""

    reads_init_from = True  # preflight reads --init-from into ``init``

    def __init__(self, cfg: TrainConfig, data: datasets.LabelledImages) -> None:
        self.cfg, self.data = cfg, data
        self.init: dict[str, Any] | None = None

    def loaded_autoencoder(self, run_dir) -> nn.Module | None:
        return None

    @property
    def module(self) -> nn.Module | None:
        return self.init and self.init["module"]

    def initial(self) -> dict[str, Any] | None:
        return self.init

    def prepare(self, out: Path, device, autoencoder: nn.Module,
                scaling: float | None) -> tuple[float, Tensors]:
        """(Main process) encode and cache; -> the scaling factor (SD's: unit-variance latents
        for the diffusion schedule, unless the autoencoder brought its own) and the latents."""
        images, labels = self.images()
        latents = encode(device, autoencoder, images)
        scaling = scaling or float(1.0 / latents.std())
        latents = latents * scaling
        atomic_write(out / LATENTS, lambda p: safetensors.torch.save_file(
            {"latents": latents.contiguous(), "labels": labels.contiguous()}, str(p)))
        return scaling, (latents, labels, None)

    @staticmethod
    def read(out: Path) -> Tensors:
        cache = safetensors.torch.load_file(str(out / LATENTS))
        return cache["latents"], cache["labels"], None

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What stage 2 learns from: every image, plus ``copies - 1`` augmented copies drawn once
        from a seeded generator (the cache is fixed, so augmentation must happen here)."""
        aug, data = self.cfg.data.augment, self.data
        if not aug.active:
            return data.images, data.labels
        gen = torch.Generator().manual_seed(self.cfg.training.seed + 3)
        copies = [data.images] + [datasets.augment(data.images, aug.translate, aug.hflip, gen)
                                  for _ in range(aug.copies - 1)]
        return torch.cat(copies), data.labels.repeat(aug.copies)

    def scheduler(self, scheduler, context):
        return scheduler


DIVERGED = 3.0  # teacher samples with this std (data: 1) are not images of the data


class TeacherPairs:
    """``udiff distill``: the teacher (loaded once, here) samples ``pairs`` guided latents from
    seeded noise, cached in ``pairs.safetensors``; the student starts as the teacher and learns
    them at the K timesteps it samples on."""

    reads_init_from = False  # a LoRA student's --init-from is its teacher's denoiser folder

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.d = cfg, cfg.distill
        self.teacher: Pipeline = load(self.d.teacher)

    def loaded_autoencoder(self, run_dir) -> nn.Module | None:
        """The teacher's autoencoder, already loaded, when the student takes it (it does)."""
        if Path(run_dir).resolve() == Path(self.d.teacher).resolve():
            return self.teacher.autoencoder
        return None

    @property
    def module(self) -> nn.Module:
        return self.teacher.denoiser

    def initial(self) -> dict[str, Any]:
        """The teacher's denoiser (a LoRA teacher's adapters folded in; a LoRA student's are
        added by the trainer) and its conditioner's state: used once, after :meth:`prepare`."""
        module = self.teacher.denoiser
        if any("lora_" in name for name, _ in module.named_parameters()):
            module = lora.unload(module)
        return {"module": module.train().requires_grad_(True),
                "conditioner_state": self.teacher.conditioner.state_dict()}

    def prepare(self, out: Path, device, autoencoder: nn.Module,
                scaling: float | None) -> tuple[float, Tensors]:
        """(Main process) the teacher's guided samples, unless a resumed run has them."""
        d, path = self.d, out / PAIRS
        if path.is_file():
            return scaling, self.read(out)
        if lora.fingerprint(Path(d.teacher) / "denoiser" / WEIGHTS) != d.teacher_sha256:
            raise UdiffError(f"teacher {d.teacher} changed since this run began (SHA-256 of "
                             "its denoiser weights differs)")
        say(f"distill: {d.pairs} guided samples of the teacher ({d.teacher_steps} steps of "
            f"{d.teacher_sampler}, guidance {d.guidance})")
        z, x0, y = teacher_pairs(self.teacher.to(device), d.pairs, teacher_spec(d),
                                 self.cfg.training.seed + 5)
        if x0.std() > DIVERGED:  # the teacher's latents are scaled to unit variance
            say(f"distill: warning: the teacher's samples are far off its training latents "
                f"(std {x0.std():.1f}, the latents' 1.0): an undertrained teacher; the "
                "student will learn what it samples")
        atomic_write(path, lambda p: safetensors.torch.save_file(
            {"x0": x0.contiguous(), "labels": y.contiguous(), "noise": z.contiguous()},
            str(p)))
        return scaling, (x0.cpu(), y, z)  # as read back: on the CPU, for the loader

    @staticmethod
    def read(out: Path) -> Tensors:
        cache = safetensors.torch.load_file(str(out / PAIRS))
        return cache["x0"], cache["labels"], cache["noise"]

    def scheduler(self, scheduler, context) -> FewStepTimesteps:
        """The run's scheduler drawing its training timesteps from the K sampling steps."""
        return training_scheduler(scheduler, context, self.cfg)


def choose(cfg: TrainConfig, data: datasets.LabelledImages) -> DataLatents | TeacherPairs:
    """The run's latent source (preflight, once)."""
    return TeacherPairs(cfg) if cfg.distill else DataLatents(cfg, data)


@torch.no_grad()
def encode(device, autoencoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Every image encoded once: unscaled latents ``[N, c, h, w]`` on CPU."""
    return torch.cat([autoencoder.encode(images[i:i + 256].to(device)).float().cpu()
                      for i in range(0, len(images), 256)])
