"""``training.png``: the run's loss curves (the held-out loss too) and validation label accuracy
and FID, read from ``log.jsonl``."""

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
    fid = series("validation", "fid")
    panels = 1 + bool(accuracy) + bool(fid)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 + 4.5 * (panels - 1), 3.6), squeeze=False)
    ax = axes[0][0]
    for stage, key, label in (("autoencoder", "loss", "stage 1: autoencoder"),
                              ("denoiser", "loss", "stage 2: denoiser"),
                              ("validation", "loss", "stage 2: held-out (fixed noise)")):
        points = series(stage, key)
        if points:
            ax.plot(*zip(*points, strict=True), label=label, marker="o" if stage == "validation" else None)
    ax.set(xlabel="optimizer step (per stage)", ylabel="loss", yscale="log", title="training loss")
    if ax.lines:
        ax.legend()
    if accuracy:
        ax = axes[0][1]
        ax.plot(*zip(*accuracy, strict=True), marker="o")
        ax.set(xlabel="denoiser step", ylabel="label accuracy", ylim=(0, 1.02),
               title="validation (EMA weights)")
    if fid:
        ax = axes[0][panels - 1]
        ax.plot(*zip(*fid, strict=True), marker="o")
        ax.set(xlabel="denoiser step", ylabel="FID vs held-out images", yscale="log",
               title="validation FID (reference features)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
