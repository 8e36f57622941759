"""The ratios ``ratios.json`` reports, each the median of paired runs (A B A B ...)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import plugins
from ..config import resolve
from ..context import Context
from ..errors import UdiffError
from ..training import optimizers
from ..weights import lora, quantize
from .cases import BareTraining, Case, bare_sample, batch, noise_and_labels, pipeline, training, udiff_sample
from .memory import peak_mb

TARGETS = {  # key: (comparison, target); compile_speedup is reported without a CPU target
    "train_overhead": ("<=", 1.03), "sample_overhead": ("<=", 1.03),
    "latent_cache_speedup": (">=", 3.0), "checkpointing_memory_ratio": ("<=", 0.6),
    "dpm20_vs_ddim50_accuracy_gap": (">=", -0.02),
    "adamw8bit_state_ratio": ("<=", 0.3), "int8_base_memory_ratio": ("<=", 0.55),
}
# What `udiff bench --strict` (and so CI) holds a run to, beside each target: the overheads are
# medians of millisecond steps on a shared 2-core machine; the checkpointing ratio is peak RSS
# (one probe pair read 0.537-0.601 over five runs of one case); the solver gap is a difference of
# two accuracies over 500 samples (about +-0.02 of sampling noise at --quick).
BOUNDS = {"train_overhead": 1.10, "sample_overhead": 1.10, "latent_cache_speedup": 3.0,
          "checkpointing_memory_ratio": 0.65, "dpm20_vs_ddim50_accuracy_gap": -0.05,
          # counted bytes (no noise); one probe pair of Stable Diffusion 1.5's UNet (0.39 here)
          "adamw8bit_state_ratio": 0.3, "int8_base_memory_ratio": 0.55}


MEMORY_PAIRS = 3


def timed(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(a: Callable, b: Callable, pairs: int, warmup: int = 1) -> dict:
    """Median of time(a) / time(b) over ``pairs`` alternating runs, plus each side's median."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(pairs):
        ta.append(timed(a))
        tb.append(timed(b))
    return {"ratio": statistics.median(x / y for x, y in zip(ta, tb, strict=True)),
            "a_seconds": statistics.median(ta), "b_seconds": statistics.median(tb),
            "pairs": pairs}


def train_overhead(case: Case, pairs: int) -> dict:
    """udiff's training step ÷ the bare loop, same modules, batch and optimizer."""
    ours, bare = training(case), BareTraining(case)
    x0, y = batch(case)
    # Steps of a few ms: more pairs and warm-up than the slow ratios, or noise dominates.
    return paired(lambda: ours.step(x0, y), lambda: bare.step(x0, y), 3 * pairs, warmup=3)


def sample_overhead(case: Case, pairs: int) -> dict:
    """udiff's sampler ÷ a bare loop over the same denoiser and diffusers scheduler."""
    pipe = pipeline(case)
    noise, labels = noise_and_labels(case)
    return paired(lambda: udiff_sample(pipe, case, noise, labels),
                  lambda: bare_sample(pipe, case, noise, labels), 3 * pairs, warmup=2)


def latent_cache_speedup(case: Case, pairs: int, autoencoder: str = "sd") -> dict:
    """Step time encoding RGB images through the autoencoder every step ÷ with cached latents
    (= cached throughput ÷ encoding throughput). Default: Stable Diffusion's VAE layout, 8x."""
    comp = plugins.get("autoencoder", "kl")
    ae = comp.build(comp.make_config(autoencoder), Context(image_channels=3)).to(case.device)
    ae.eval().requires_grad_(False)
    side = case.latent_size * ae.downsample
    images = torch.randn(case.batch, 3, side, side, device=case.device)
    ours = training(case)
    x0, y = batch(case)

    def encoding():
        with torch.no_grad():
            latents = ae.encode(images)
        ours.step(latents, y)

    out = paired(encoding, lambda: ours.step(x0, y), pairs)
    return out | {"autoencoder": f"kl/{autoencoder}", "image_side": side}


def checkpointing(case: Case, pairs: int, memory_pairs: int = MEMORY_PAIRS) -> dict:
    """Peak training memory and step time with gradient checkpointing ÷ without. Peak RSS is
    noisy (one probe pair read 0.537-0.601 over five runs): the median of ``memory_pairs``
    interleaved probe pairs, each probe a fresh process (--quick: one pair, inside the bound
    0.65 on every reading)."""
    on = Case(**{**case.as_dict(), "gradient_checkpointing": True})
    probes = [(peak_mb(on, ("train",))["train"], peak_mb(case, ("train",))["train"])
              for _ in range(memory_pairs)]
    mem_on, mem_off = (statistics.median(side) for side in zip(*probes, strict=True))
    a, b = training(on), training(case)
    x0, y = batch(case)
    t = paired(lambda: a.step(x0, y), lambda: b.step(x0, y), pairs)
    ratio = statistics.median(with_ / without for with_, without in probes)
    return {"memory_ratio": ratio, "time_ratio": t["ratio"],
            "memory_pairs": memory_pairs, "peak_mb_on": mem_on,
            "peak_mb_off": mem_off, "case": case.id, "latent_size": case.latent_size}


def lora_memory(case: Case, pairs: int, rank: int = 8) -> dict:
    """Peak training memory of LoRA (rank 8 on the attention projections, base frozen) ÷ full
    fine-tuning of the same preset and batch."""
    lora.require()  # without the extra: skipped with this reason (before any probe runs)
    adapted = Case(**{**case.as_dict(), "lora_rank": rank})
    mem_lora, mem_full = peak_mb(adapted, ("train",))["train"], peak_mb(case, ("train",))["train"]
    trained = training(adapted)
    trainable = sum(p.numel() for p in trained.params)
    total = sum(p.numel() for p in trained.model.parameters())
    return {"memory_ratio": mem_lora / mem_full, "peak_mb_lora": mem_lora, "peak_mb_full": mem_full,
            "trainable_fraction": trainable / total, "rank": rank, "case": case.id}


def optimizer_state(case: Case) -> dict:
    """8-bit AdamW's state bytes ÷ AdamW's after one step of the same case, counted."""
    optimizers.require("adamw8bit")
    out = {}
    for name in ("adamw", "adamw8bit"):
        step = training(Case(**{**case.as_dict(), "optimizer": name}))
        step.step(*batch(case))
        out[name] = optimizers.state_bytes(step.optimizer.optimizer)  # accelerate wraps it
    return {"ratio": out["adamw8bit"] / out["adamw"], "bytes_adamw": out["adamw"],
            "bytes_adamw8bit": out["adamw8bit"], "case": case.id}


# The issue's case: Stable Diffusion 1.5's UNet (built, not downloaded), LoRA rank 8 on its
# attention, one step at 256 px (32x32 latents of the f8 autoencoder), batch 1
SD15 = Case("unet", "sd15", 1, latent_size=32, lora_rank=8)


def base_memory(case: Case = SD15, precisions: tuple[str, ...] = ("int8", "fp8")) -> dict:
    """Peak training memory of a LoRA step with the frozen base stored at each precision ÷ the
    fp32 base's (one probe each; the probe's heap returns what it frees: bench.memory)."""
    lora.require()
    quantize.require("int8")
    if case.backbone not in plugins.registry().components["denoiser"]:
        raise UdiffError(f"the {case.backbone} backbone is not installed")
    peak = {p: peak_mb(Case(**{**case.as_dict(), "base_precision": p}), ("train",), steps=1,
                       freed_returned=True)["train"] for p in ("fp32", *precisions)}
    return {"ratios": {p: peak[p] / peak["fp32"] for p in precisions},
            "peak_mb": peak, "case": case.id, "latent_size": case.latent_size}


def compile_speedup(case: Case, pairs: int) -> dict:
    """Sampling with ``torch.compile`` on the denoiser ÷ eager; compile time reported apart."""
    eager, compiled = pipeline(case), pipeline(case)
    compiled.compile()
    noise, labels = noise_and_labels(case)
    compile_seconds = timed(lambda: udiff_sample(compiled, case, noise, labels))
    t = paired(lambda: udiff_sample(eager, case, noise, labels),
               lambda: udiff_sample(compiled, case, noise, labels), pairs, warmup=0)
    return {"speedup": t["ratio"], "compile_seconds": compile_seconds,
            "eager_seconds": t["a_seconds"], "compiled_seconds": t["b_seconds"]}


def solver_gap(backbone: str, quick: bool, device: str = "cpu") -> dict:
    """Label accuracy of DPM-Solver++ 20 steps minus DDIM 50 steps, one tiny digits model
    (epsilon objective); both samplers start from the same noise."""
    from ..data import load_digits
    from ..evaluation.reference import accuracy, train_reference
    from ..sampling import load
    from ..training import train

    steps, per_label, epochs = (1200, 50, 15) if quick else (4000, 100, 40)
    cfg = resolve(overrides={
        "denoiser": {"name": backbone, "preset": "tiny"}, "scheduler": {"name": "ddpm"},
        "training": {"autoencoder_steps": 150 if quick else 300, "max_steps": steps,
                     "batch_size": 48, "lr": 2e-3, "ema_decay": 0.995, "device": device},
    })
    with tempfile.TemporaryDirectory() as tmp:
        run = train(cfg, Path(tmp) / "run", progress=False)
        pipe = load(run, device)
        digits = load_digits(cfg.data.image_size)
        classifier, reference = train_reference(digits, epochs=epochs, progress=False)
        acc = {}
        for name, n in (("dpm++", 20), ("ddim", 50)):
            images, labels = pipe.sample_tensor(range(10), per_label, steps=n, guidance=3.0, sampler=name)
            acc[name] = accuracy(classifier, images, labels)[0]
    return {"gap": acc["dpm++"] - acc["ddim"], "dpm20_accuracy": acc["dpm++"],
            "ddim50_accuracy": acc["ddim"], "samples": 10 * per_label, "denoiser_steps": steps,
            "reference_accuracy": reference, "backbone": backbone, "guidance": 3.0}
