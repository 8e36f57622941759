"""GPU benchmark (benchmarks/gpu.sh): SD1.5-size UNet, DiT-XL/2 and a DiT-XL-sized Flux at bf16
with SDPA, 256x256 images (32x32x4 latents): training step time and peak memory at batch 4 and at
the largest power-of-two batch that fits, and seconds per image for DDIM-50 with CFG, batched.

    python benchmarks/gpu.py --out benchmarks/results        # on a CUDA machine
    python benchmarks/gpu.py --device cpu --tiny --out /tmp/x  # the same code path on CPU, tiny
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from udiff.bench.cases import Case, batch, noise_and_labels, pipeline, size, training, udiff_sample
from udiff.bench.memory import peak_mb

MODELS = [("unet", "sd15"), ("dit", "XL/2"), ("flux", "xl")]
TINY = [("unet", "tiny"), ("dit", "tiny"), ("flux", "tiny")]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_seconds(case: Case, steps: int) -> float:
    trainer = training(case)
    x0, y = batch(case)
    trainer.step(x0, y)  # warm-up
    times = []
    for _ in range(steps):
        sync(case.device)
        start = time.perf_counter()
        trainer.step(x0, y)
        sync(case.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_or_none(case: Case) -> float | None:
    """The training step's peak (MiB), or None when it does not fit the device."""
    try:
        return peak_mb(case, ("train",))["train"]
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        if case.device == "cuda":
            torch.cuda.empty_cache()


def largest_batch(case: Case, limit: int, peak: float) -> tuple[int, float]:
    """Doubling ``case.batch`` (whose peak is ``peak``) while it fits: (batch, its peak); each
    probe's peak is the answer's, so none is measured twice."""
    n = case.batch
    while n * 2 <= limit and (bigger := peak_or_none(replace(case, batch=n * 2))) is not None:
        n, peak = n * 2, bigger
    return n, peak


def sample_seconds_per_image(case: Case) -> float:
    pipe = pipeline(case)
    noise, labels = noise_and_labels(case)
    dtype = torch.bfloat16 if case.mixed_precision == "bf16" else torch.float32
    with torch.autocast(case.device, dtype=dtype, enabled=case.mixed_precision == "bf16"):
        udiff_sample(pipe, replace(case, steps=2), noise, labels)  # warm-up
        sync(case.device)
        start = time.perf_counter()
        udiff_sample(pipe, case, noise, labels)
        sync(case.device)
    return (time.perf_counter() - start) / case.batch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny presets (exercise the code on CPU)")
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny to exercise the script")
    latent, steps = (8, 3) if args.tiny else (32, 5)
    results = []
    for backbone, preset in TINY if args.tiny else MODELS:
        base = Case(backbone, preset, 4, args.device, latent, scheduler="ddpm", steps=50,
                    guidance=4.0, mixed_precision="bf16", sampler="ddim")  # the plan's DDIM-50
        row = {"backbone": backbone, "preset": preset, **size(base)}
        row["train_b4_s"] = step_seconds(base, steps)
        row["train_b4_peak_mb"] = peak_mb(base, ("train",))["train"]
        limit = min(16, args.max_batch) if args.tiny else args.max_batch
        largest, peak = largest_batch(base, limit, row["train_b4_peak_mb"])
        big = replace(base, batch=largest)
        row.update(largest_batch=big.batch, train_largest_s=step_seconds(big, steps),
                   train_largest_peak_mb=peak)
        sample = replace(base, batch=8 if args.tiny else 32, steps=3 if args.tiny else 50)
        row.update(ddim_steps=sample.steps, sample_batch=sample.batch,
                   sample_s_per_image=sample_seconds_per_image(sample))
        print(json.dumps(row), flush=True)
        results.append(row)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    doc = {"device": name, "date": stamp, "torch": torch.__version__, "precision": "bf16",
           "attention": "sdpa", "latents": [4, latent, latent], "results": results}
    path = out / f"gpu-{name.replace(' ', '_')}-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
