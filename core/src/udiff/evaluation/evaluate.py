"""``udiff eval``: sample every label of a run and score it against the run's own training images.

Label accuracy is judged by a reference classifier trained on a stratified 80% of the run's images
(its held-out accuracy is reported, so the number means something); FID/KID and diversity are
computed in a named feature space (``udiff.quality``); the autoencoder is scored on the images
stage 1 held out.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from .. import data as datasets
from ..errors import UdiffError
from ..images import grid
from ..run.files import write_json
from ..sampling import load
from .memorization import NearCopies, pairs_picture
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


class Judge:
    """A run, its images, the reference classifier and the real images' features: built once,
    then ``score`` any number of sample sets (``udiff eval`` scores one, the sweep many)."""

    def __init__(self, run_dir: str | Path, inception: str | Path | None = None,
                 progress: bool = True, reference: str = "all", **overrides) -> None:
        """``reference``: the real images FID/KID compare with: "all" the run's images, "held"
        its held-out split (``udiff compare``). ``overrides``: of the run's sampling spec
        (:meth:`Pipeline.spec`) -> :attr:`spec`, checked before any work; its seed also seeds
        the judge (splits, KID subsets)."""
        self.weights = inception_weights(inception)
        inception_net = InceptionFeatures(self.weights) if self.weights else None  # fails here
        self.run_dir, self.pipe = run_dir, load(run_dir)
        self.spec = self.pipe.spec(**overrides)  # another family's sampler fails here
        self.seed, self.cfg = self.spec.seed, self.pipe.config
        self.data = data = datasets.load(self.cfg.data.source, self.cfg.data.image_size,
                                         self.cfg.data.channels)
        t = self.cfg.training
        # the classifier never sees the run's held-out images (training.holdout), as in validation
        self.splits = datasets.splits(data, t.holdout, t.autoencoder_holdout, t.splits_seed)
        if reference == "held" and self.splits.held is None:
            raise UdiffError(f"{run_dir} holds no held-out images (training.holdout = 0) to "
                             "judge against")
        self.reference = self.splits.held if reference == "held" else data
        self.classifier, self.reference_accuracy = train_reference(
            self.splits.train, seed=t.seed, progress=progress)
        self.features = inception_net or ClassifierFeatures(self.classifier)
        self.real = embed(self.features, self.reference.images)  # [N_real, F]
        half_a, half_b = datasets.split_indices(self.reference.labels, 0.5, self.seed)
        self.floor = fid_kid(self.real[half_a], self.real[half_b], self.seed)  # two halves of the real
        self.real_diversity = diversity(self.real, self.reference.labels)
        everything = self.real if reference == "all" else embed(self.features, data.images)
        self.copies = NearCopies(data.images, everything, data.labels, data.label_names)

    def for_run(self, run_dir: str | Path, **overrides) -> Judge:
        """This judge (its classifier, features and real images) for another run trained on the
        same images and splits (the arms of ``udiff compare``)."""
        pipe = load(run_dir)
        mine, theirs = self.cfg, pipe.config
        same = lambda c: (c.data, c.training.holdout, c.training.autoencoder_holdout,  # noqa: E731
                          c.training.splits_seed)
        if same(mine) != same(theirs):
            raise UdiffError(f"{run_dir} was trained on other images or splits than "
                             f"{self.run_dir}: it needs its own judge")
        other = copy.copy(self)
        other.run_dir, other.pipe = run_dir, pipe
        other.spec = pipe.spec(**({"seed": self.seed} | overrides))
        return other

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[dict, dict]:
        """Accuracy, FID/KID, diversity and memorisation of ``images [N, C, H, W]`` with their
        ``labels [N]`` -> (metrics, the closest sample/training pairs)."""
        names, real, ref = self.data.label_names, self.real, self.reference
        label_accuracy, per = accuracy(self.classifier, images, labels)
        fake = embed(self.features, images)  # [N, F]
        overall = fid_kid(real, fake, self.seed)
        per_label = {names[k]: fid_kid(real[ref.labels == k], fake[labels == k], self.seed)
                     for k in range(len(names))}
        copies, pairs = self.copies.score(images, fake, labels)
        return {
            "label_accuracy": label_accuracy,
            "label_accuracy_per_label": {names[k]: v for k, v in per.items()},
            "reference_accuracy": self.reference_accuracy,
            "fid": overall["fid"], "kid": overall["kid"], "kid_std": overall["kid_std"],
            "fid_features": self.features.name,
            "fid_per_label": {k: v["fid"] for k, v in per_label.items()},
            "kid_per_label": {k: v["kid"] for k, v in per_label.items()},
            "fid_real_vs_real": self.floor["fid"], "kid_real_vs_real": self.floor["kid"],
            "diversity": diversity(fake, labels), "real_diversity": self.real_diversity,
            "memorization": copies,
        }, pairs


def evaluate_run(run_dir: str | Path, out: str | Path, per_label: int = 30,
                 inception: str | Path | None = None, progress: bool = True,
                 **overrides) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Write ``out`` (metrics JSON) and two PNGs beside it (real vs generated; the 8 samples
    closest to a training image); returns the metrics and the generated images
    ``[N, C, H, W]`` with their labels ``[N]``. ``overrides``: of the run's sampling spec."""
    start = time.time()
    out = check_out(out)
    if per_label < 2:
        raise UdiffError("--per-label must be at least 2 (FID needs two samples per set)")
    judge = Judge(run_dir, inception, progress, **overrides)
    spec, data, cfg = judge.spec, judge.data, judge.cfg
    images, labels = judge.pipe.sample_tensor(range(len(data.label_names)), per_label, spec,
                                              progress=progress)
    scores, pairs = judge.score(images, labels)
    held = judge.splits.autoencoder_held
    metrics = {
        "run_dir": str(run_dir), "backbone": cfg.denoiser.name,
        "trained_with": judge.pipe.scheduler_name, **scores,
        "autoencoder": reconstruction(judge.pipe.autoencoder, (held or judge.splits.train).images) | {
            "held_out": held is not None},
        "settings": {"per_label": per_label, **spec.settings(), "real_images": len(data),
                     "inception_weights": str(judge.weights) if judge.weights else None},
        "seconds": round(time.time() - start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    picture(data, images, labels).save(out.with_suffix(".png"))
    pairs_picture(pairs).save(memorization_png(out))
    write_json(out, metrics)
    return metrics, images, labels


def memorization_png(out: Path) -> Path:
    return out.with_name(f"{out.stem}-memorization.png")


def picture(data: datasets.LabelledImages, images: torch.Tensor, labels: torch.Tensor):
    """A row per label: up to 8 real images, a white gap, up to 8 generated."""
    rows = []
    for k in range(len(data.label_names)):
        real, fake = data.images[data.labels == k][:SHOWN], images[labels == k][:SHOWN]
        pad = lambda x: torch.cat([x, -torch.ones(SHOWN - len(x), *x.shape[1:])])  # noqa: E731
        rows += [pad(real), torch.ones(1, *real.shape[1:]), pad(fake)]
    return grid(torch.cat(rows), rows=len(data.label_names))
