"""``udiff demo``: train on the embedded digits, sample every label, evaluate — on 2 CPU cores."""

from __future__ import annotations

import time
from pathlib import Path

from . import data as datasets
from . import plugins
from .checkpoint import write_json
from .config import merge, resolve
from .evaluate import accuracy, diversity, train_reference
from .images import grid
from .sampling import load
from .training import prepare_out, train

# Sized so the UNet demo fits the 300 s budget on 2 cores (see README for measured figures).
DEMO = {
    "data": {"source": "digits", "image_size": 16},
    "autoencoder": {"name": "kl", "preset": "tiny"},
    "training": {"autoencoder_steps": 300, "max_steps": 800, "batch_size": 48, "lr": 2e-3,
                 "warmup_steps": 50, "ema_decay": 0.995},
    "sampling": {"steps": 20},
}
# The demo's sampler per objective family, measured on the demo models: DPM-Solver++ for noise
# prediction; Euler for rectified flow, whose velocity guidance collapses diversity at the noise
# family's CFG 6 (README), so it gets CFG 2.
SAMPLERS = {"noise": {"scheduler": "dpm++", "guidance": 6.0},
            "flow": {"scheduler": "flow", "guidance": 2.0}}
PER_LABEL = 30  # samples per label scored by the reference classifier


def run(backbone: str = "unet", out: str | Path = "demo-run", preset: str | None = "small",
        seed: int = 0, overwrite: bool = False, progress: bool = True,
        overrides: dict | None = None) -> dict:
    start = time.time()
    out = Path(out)
    cfg = resolve(None, merge({"denoiser": {"name": backbone, "preset": preset},
                               "training": {"seed": seed}}, overrides or {}), defaults=DEMO)
    prepare_out(out, overwrite)
    run_dir = train(cfg, out / "run", overwrite=True, progress=progress)
    t_train = time.time() - start

    digits = datasets.load_digits(cfg.data.image_size)
    classifier, reference_accuracy = train_reference(digits, seed=seed, progress=progress)
    pipe = load(run_dir)
    s = cfg.sampling
    family = plugins.get("scheduler", pipe.scheduler_name).meta.get("family")
    default = SAMPLERS.get(family, {"scheduler": pipe.scheduler_name, "guidance": 3.0})
    sampler = s.scheduler or default["scheduler"]
    guidance = default["guidance"] if "guidance" not in s.model_fields_set else s.guidance
    images, labels = pipe.sample_tensor(range(len(digits.label_names)), PER_LABEL, s.steps,
                                        guidance, seed, sampler, progress=progress)
    label_accuracy, per_label = accuracy(classifier, images, labels)
    keep = [i for i in range(len(labels)) if i % PER_LABEL < 10]  # 10 per row in the picture
    grid(images[keep], rows=len(digits.label_names)).save(out / "samples.png")
    metrics = {
        "backbone": backbone, "preset": preset, "label_accuracy": label_accuracy,
        "label_accuracy_per_label": {digits.label_names[k]: v for k, v in per_label.items()},
        "reference_accuracy": reference_accuracy, "samples_per_label": PER_LABEL,
        "trained_with": pipe.scheduler_name,
        "sampler": {"scheduler": sampler, "steps": s.steps, "guidance": guidance},
        # mean pairwise pixel distance within a label; real digits beside it
        "diversity": round(diversity(images, labels), 3),
        "real_diversity": round(diversity(digits.images, digits.labels), 3),
        "train_seconds": round(t_train, 1), "wall_seconds": round(time.time() - start, 1),
        "run_dir": str(run_dir),
    }
    write_json(out / "metrics.json", metrics)
    return metrics
