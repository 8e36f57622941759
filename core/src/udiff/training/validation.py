"""Validation during training, on images no stage trained on (``training.holdout``): the held-out
loss at fixed noise and timesteps, a sample grid from the EMA weights, its label accuracy and
FID/KID against the held-out images in the reference classifier's features (``udiff eval``'s
measures). The reference classifier learns from the training split only."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import TrainConfig
from ..data import Splits
from ..evaluation.quality import ClassifierFeatures, embed, fid_kid
from ..evaluation.reference import accuracy, train_reference
from ..images import grid
from ..run.layout import VALIDATION
from ..sampling import Pipeline
from .objective import Denoising, denoising_loss
from .sources import encode
from .step import DenoiserTraining

LOSS_DRAWS = 4  # (noise, timestep) draws per held-out image: a low-variance, fixed loss


class HeldOutLoss:
    """The objective on the held-out latents with noise and timesteps drawn once (seeded): the
    same inputs at every validation, so the curve moves only with the weights."""

    def __init__(self, pipe: Pipeline, scheduler, images: torch.Tensor, labels: torch.Tensor,
                 seed: int) -> None:
        self.pipe, self.scheduler = pipe, scheduler
        device = pipe.device
        latents = encode(device, pipe.autoencoder, images) * pipe.scaling_factor  # [H, c, h, w]
        gen = torch.Generator().manual_seed(seed)
        self.x0 = latents.repeat(LOSS_DRAWS, 1, 1, 1).to(device)  # [R*H, c, h, w]
        self.labels = labels.repeat(LOSS_DRAWS).to(device)  # [R*H]
        self.noise = torch.randn(self.x0.shape, generator=gen).to(device)
        self.ts = scheduler.sample_timesteps(len(self.x0), "cpu", generator=gen).to(device)

    @torch.no_grad()
    def __call__(self) -> float:
        model = Denoising(self.pipe.denoiser, self.pipe.conditioner)  # unwrapped: main only
        total = 0.0
        for i in range(0, len(self.x0), 256):
            part = slice(i, i + 256)
            total += float(denoising_loss(model, self.scheduler, self.x0[part], self.labels[part],
                                          self.noise[part], self.ts[part])) * len(self.x0[part])
        return total / len(self.x0)


class Validation:
    """Every ``validate_every`` steps, with the EMA weights: the held-out loss, ``validate_per_label``
    samples per label (``validation/step-N.png``), their label accuracy and FID/KID against the
    held-out images. Runs under a forked RNG, so validating (or not) never changes the trained
    weights."""

    def __init__(self, cfg: TrainConfig, out: Path, log, accelerator, splits: Splits,
                 pipe: Pipeline, scheduler) -> None:
        self.cfg, self.out, self.accelerator, self.pipe = cfg, out, accelerator, pipe
        self.names = pipe.label_names
        t, held = cfg.training, splits.held
        with torch.random.fork_rng(devices=[]):
            self.classifier, self.reference_accuracy = train_reference(splits.train, seed=t.seed,
                                                                       progress=False)
            self.features = ClassifierFeatures(self.classifier)
            self.real = embed(self.features, held.images) if held is not None else None  # [H, F]
            self.loss = HeldOutLoss(pipe, scheduler, held.images, held.labels, t.seed + 5) \
                if held is not None else None
        log(stage="reference", step=0, held_out_accuracy=self.reference_accuracy,
            held_out_images=0 if held is None else len(held))

    def __call__(self, training: DenoiserTraining) -> dict:
        cfg, pipe = self.cfg, self.pipe
        live = [p.detach().clone() for p in training.params]
        if training.ema is not None:
            training.ema.copy_to(training.params)
        pipe.denoiser.eval(), pipe.conditioner.eval()
        with torch.random.fork_rng(devices=[]):  # fid_kid seeds the global generator too
            try:
                row = {"loss": self.loss()} if self.loss is not None else {}
                images, labels = pipe.sample_tensor(range(len(self.names)),
                                                    cfg.training.validate_per_label, seed=0,
                                                    progress=False)
            finally:
                with torch.no_grad():
                    for p, v in zip(training.params, live, strict=True):
                        p.copy_(v)
                pipe.denoiser.train(), pipe.conditioner.train()
            row["label_accuracy"] = accuracy(self.classifier, images, labels)[0]
            if self.real is not None and len(self.real) >= 2 and len(images) >= 2:
                scores = fid_kid(self.real, embed(self.features, images), seed=0)
                row |= {"fid": scores["fid"], "kid": scores["kid"]}
        if self.accelerator.is_main_process:
            path = self.out / VALIDATION / f"step-{training.steps:06d}.png"
            path.parent.mkdir(exist_ok=True)
            grid(images, rows=len(self.names)).save(path)
        return row
