"""Validation during training: a small sample grid from the EMA weights and its label accuracy."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import TrainConfig
from ..data import LabelledImages
from ..evaluation.reference import accuracy, train_reference
from ..images import grid
from ..run.layout import VALIDATION
from ..sampling import Pipeline
from .step import DenoiserTraining


class Validation:
    """Every ``validate_every`` steps: sample ``validate_per_label`` images per label with the EMA
    weights, write ``validation/step-N.png`` and return the reference classifier's accuracy.

    Runs under a forked RNG, so validating (or not) never changes the trained weights."""

    def __init__(self, cfg: TrainConfig, out: Path, log, accelerator, data: LabelledImages,
                 pipe: Pipeline) -> None:
        self.cfg, self.out, self.accelerator, self.pipe, self.data = cfg, out, accelerator, pipe, data
        t = cfg.training
        with torch.random.fork_rng(devices=[]):
            self.classifier, self.reference_accuracy = train_reference(data, seed=t.seed,
                                                                       progress=False)
        log(stage="reference", step=0, held_out_accuracy=self.reference_accuracy)

    def __call__(self, training: DenoiserTraining) -> dict:
        cfg, pipe = self.cfg, self.pipe
        live = [p.detach().clone() for p in training.params]
        if training.ema is not None:
            training.ema.copy_to(training.params)
        pipe.denoiser.eval(), pipe.conditioner.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                images, labels = pipe.sample_tensor(range(len(self.data.label_names)),
                                                    cfg.training.validate_per_label, seed=0)
        finally:
            with torch.no_grad():
                for p, v in zip(training.params, live, strict=True):
                    p.copy_(v)
            pipe.denoiser.train(), pipe.conditioner.train()
        if self.accelerator.is_main_process:
            path = self.out / VALIDATION / f"step-{training.steps:06d}.png"
            path.parent.mkdir(exist_ok=True)
            grid(images, rows=len(self.data.label_names)).save(path)
        return {"label_accuracy": accuracy(self.classifier, images, labels)[0]}
