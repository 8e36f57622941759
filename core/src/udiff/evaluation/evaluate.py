"""``udiff eval``: sample every label of a run and score it against the run's own training images.

Label accuracy is judged by a reference classifier trained on a stratified 80% of the run's images
(its held-out accuracy is reported, so the number means something); FID/KID and diversity are
computed in a named feature space (``udiff.quality``); the autoencoder is scored on the images
stage 1 held out.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import data as datasets
from ..config import resolve
from ..errors import UdiffError
from ..images import grid
from ..plugins import defaults
from ..run.files import write_json
from ..run.layout import CONFIG
from ..sampling import load
from .quality import (
    ClassifierFeatures,
    InceptionFeatures,
    diversity,
    embed,
    fid_kid,
    inception_weights,
    reconstruction,
)
from .reference import accuracy, train_reference

SHOWN = 8  # real and generated images per label in the PNG


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".json":
        raise UdiffError(f"--out {out}: must be a .json file (the PNG is written beside it)")
    if out.is_dir():
        raise UdiffError(f"--out {out} is a directory")
    return out


def evaluate_run(run_dir: str | Path, out: str | Path, per_label: int = 30, steps: int | None = None,
                 scheduler: str | None = None, guidance: float | None = None, seed: int = 0,
                 inception: str | Path | None = None, progress: bool = True,
                 guidance_interval: tuple[float, float] | None = None,
                 guidance_rescale: float = 0.0) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Write ``out`` (metrics JSON) and the PNG beside it; returns the metrics and the generated
    images ``[N, C, H, W]`` with their labels ``[N]``."""
    start = time.time()
    out = check_out(out)
    if per_label < 2:
        raise UdiffError("--per-label must be at least 2 (FID needs two samples per set)")
    weights = inception_weights(inception)
    inception_net = InceptionFeatures(weights) if weights else None  # bad weights fail here
    pipe = load(run_dir)
    cfg = resolve(Path(run_dir) / CONFIG)
    sampler, guidance = defaults.sampler(pipe.scheduler_name, scheduler, guidance)
    pipe.scheduler(sampler)  # a sampler of another family fails here, before any work
    steps = steps or cfg.sampling.steps
    data = datasets.load(cfg.data.source, cfg.data.image_size, cfg.data.channels)

    classifier, reference_accuracy = train_reference(data, seed=cfg.training.seed, progress=progress)
    images, labels = pipe.sample_tensor(range(len(data.label_names)), per_label, steps, guidance,
                                        seed, sampler, progress=progress,
                                        guidance_interval=guidance_interval,
                                        guidance_rescale=guidance_rescale)
    label_accuracy, per = accuracy(classifier, images, labels)

    features = inception_net or ClassifierFeatures(classifier)
    real, fake = embed(features, data.images), embed(features, images)
    names = data.label_names
    overall = fid_kid(real, fake, seed)
    per_label_scores = {names[k]: fid_kid(real[data.labels == k], fake[labels == k], seed)
                        for k in range(len(names))}
    # The floor: two halves of the real images, in the same space.
    half_a, half_b = datasets.split_indices(data.labels, 0.5, seed)
    floor = fid_kid(real[half_a], real[half_b], seed)

    _, held = datasets.autoencoder_split(data, cfg.training.autoencoder_holdout, cfg.training.seed)
    metrics = {
        "run_dir": str(run_dir), "backbone": cfg.denoiser.name, "trained_with": pipe.scheduler_name,
        "label_accuracy": label_accuracy,
        "label_accuracy_per_label": {names[k]: v for k, v in per.items()},
        "reference_accuracy": reference_accuracy,
        "fid": overall["fid"], "kid": overall["kid"], "kid_std": overall["kid_std"],
        "fid_features": features.name,
        "fid_per_label": {k: v["fid"] for k, v in per_label_scores.items()},
        "kid_per_label": {k: v["kid"] for k, v in per_label_scores.items()},
        "fid_real_vs_real": floor["fid"], "kid_real_vs_real": floor["kid"],
        "diversity": diversity(fake, labels), "real_diversity": diversity(real, data.labels),
        "autoencoder": reconstruction(pipe.autoencoder, (held or data).images) | {
            "held_out": held is not None},
        "settings": {"per_label": per_label, "steps": steps, "scheduler": sampler,
                     "guidance": guidance, "guidance_interval": guidance_interval,
                     "guidance_rescale": guidance_rescale, "seed": seed, "real_images": len(data),
                     "inception_weights": str(weights) if weights else None},
        "seconds": round(time.time() - start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    picture(data, images, labels).save(out.with_suffix(".png"))
    write_json(out, metrics)
    return metrics, images, labels


def picture(data: datasets.LabelledImages, images: torch.Tensor, labels: torch.Tensor):
    """A row per label: up to 8 real images, a white gap, up to 8 generated."""
    rows = []
    for k in range(len(data.label_names)):
        real, fake = data.images[data.labels == k][:SHOWN], images[labels == k][:SHOWN]
        pad = lambda x: torch.cat([x, -torch.ones(SHOWN - len(x), *x.shape[1:])])  # noqa: E731
        rows += [pad(real), torch.ones(1, *real.shape[1:]), pad(fake)]
    return grid(torch.cat(rows), rows=len(data.label_names))
