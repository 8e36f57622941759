"""``training.png``: the run's loss curves and validation label accuracy, read from ``log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path


def training_curves(log: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    series = lambda stage, key: [(r["step"], r[key]) for r in rows  # noqa: E731
                                 if r.get("stage") == stage and key in r]
    accuracy = series("validation", "label_accuracy")
    fig, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(10 if accuracy else 5.5, 3.6),
                             squeeze=False)
    ax = axes[0][0]
    for stage, label in (("autoencoder", "stage 1: autoencoder"), ("denoiser", "stage 2: denoiser")):
        points = series(stage, "loss")
        if points:
            ax.plot(*zip(*points, strict=True), label=label)
    ax.set(xlabel="optimizer step (per stage)", ylabel="loss", yscale="log", title="training loss")
    if ax.lines:
        ax.legend()
    if accuracy:
        ax = axes[0][1]
        ax.plot(*zip(*accuracy, strict=True), marker="o")
        ax.set(xlabel="denoiser step", ylabel="label accuracy", ylim=(0, 1.02),
               title="validation (EMA weights)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
