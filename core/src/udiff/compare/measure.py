"""What ``udiff compare`` measures of each arm -- quality by one judge, time and memory here --
and estimates for the target GPU (:mod:`udiff.bench.footprint`)."""

from __future__ import annotations

import functools
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import data as datasets
from .. import plugins
from ..bench import footprint
from ..bench.cases import Case, built, training
from ..bench.memory import peak_mb
from ..config import TrainConfig, resolve
from ..context import Context
from ..errors import UdiffError
from ..images import grid
from ..plugins.assembly import Part
from ..run.files import read_json
from ..run.layout import LOG, RUN_FILE
from ..training.estimate import seconds_per_call
from .plan import OBJECTIVE, Arm, Settings

TARGET_DOWNSAMPLING = 8  # the target's autoencoder: Stable Diffusion's f8 (256 px -> 32x32)
SPIKE = 3.0  # a logged loss above SPIKE x the median of the 5 before it is a spike
STATE_BYTES = 4 * 5  # fp32 weights, gradients, two AdamW moments, the EMA copy: per parameter
SHOWN = 8  # samples per label in an arm's picture (10 labels at most)
# The budget probe's calls: AdamW's first steps allocate its state and pick kernels, so a short
# probe reads 1.2-1.4x slow (measured against udiff train's own step time on the digits).
PROBE_WARMUP, PROBE_TIMED = 10, 20


@dataclass(frozen=True)
class Shape:
    """The latents every arm trains on and the labels it conditions on."""

    channels: int
    size: int
    labels: int
    batch: int


def shape(base: dict, autoencoder_run: str | None) -> Shape:
    """From the shared autoencoder's run, or its config built on the meta device."""
    cfg: TrainConfig = resolve(None, base)
    if autoencoder_run:
        ctx = read_json(Path(autoencoder_run) / RUN_FILE, "run")["context"]
        return Shape(ctx["latent_channels"], ctx["latent_size"], ctx["num_labels"],
                     cfg.training.batch_size)
    data = datasets.load(cfg.data.source, cfg.data.image_size, cfg.data.channels)
    ctx = Context(image_channels=data.images.shape[1], image_size=cfg.data.image_size,
                  num_labels=len(data.label_names))
    with torch.device("meta"):
        ctx = ctx.with_latents(Part.of("autoencoder", cfg.autoencoder).build(ctx))
    return Shape(ctx.latent_channels, ctx.latent_size, ctx.num_labels, cfg.training.batch_size)


def case(backbone: str, preset: str | None, s: Shape, **over) -> Case:
    return Case(backbone, preset, s.batch, latent_size=s.size, latent_channels=s.channels,
                labels=s.labels, scheduler=OBJECTIVE, **over)


def step_seconds(backbone: str, preset: str | None, s: Shape) -> float:
    """One stage-2 optimizer step here (DenoiserTraining on a batch of the arms' shape), the
    median of PROBE_TIMED after PROBE_WARMUP."""
    with torch.random.fork_rng(devices=[]):
        step, c = training(case(backbone, preset, s)), case(backbone, preset, s)
        x0 = torch.randn(c.batch, c.latent_channels, c.latent_size, c.latent_size)
        y = torch.randint(0, c.labels, (c.batch,))
        return seconds_per_call(lambda: step.step(x0, y), PROBE_WARMUP, PROBE_TIMED)


def parameters(backbone: str, preset: str | None, s: Shape) -> int:
    with torch.device("meta"):
        denoiser, conditioner, _ = built(case(backbone, preset, s))
    return sum(p.numel() for m in (denoiser, conditioner) for p in m.parameters())


def target_case(backbone: str, preset: str | None, st: Settings, s: Shape) -> Case:
    side = st.target_image_size // TARGET_DOWNSAMPLING
    return replace(case(backbone, preset, s), batch=st.target_batch or s.batch, device="cuda",
                   latent_size=side, mixed_precision=st.target_precision,
                   gradient_checkpointing=st.target_checkpointing)


@functools.cache
def estimate(case: Case) -> footprint.Footprint:
    """``footprint.estimate``, once per case in a process: the target's AdamW case is also the
    first memory option and, for the arm's own preset, the largest-fitting search's (each is a
    full training step on fake tensors, ~2 s on CPU)."""
    return footprint.estimate(case)


def at_target(backbone: str, preset: str | None, st: Settings, s: Shape) -> dict:
    """The estimated training peak at the target's size, batch and precision; whether it fits."""
    try:
        f = estimate(target_case(backbone, preset, st, s))
    except Exception as e:  # a backbone that cannot run on fake tensors: say so, go on
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    return f.as_dict() | {"fits": f.peak <= st.target_memory}


# The memory options (issue 32), in the order a user would reach for them: what each changes in
# the target case. LoRA: rank 8 on the attention projections of a frozen base.
OPTIONS = {
    "AdamW": {},
    "8-bit AdamW": {"optimizer": "adamw8bit"},
    "8-bit AdamW + checkpointing": {"optimizer": "adamw8bit", "gradient_checkpointing": True},
    "paged 8-bit AdamW + checkpointing": {"optimizer": "paged_adamw8bit",
                                          "gradient_checkpointing": True},
    "LoRA, fp32 base": {"lora_rank": 8},
    "LoRA, int8 base": {"lora_rank": 8, "base_precision": "int8"},
    "LoRA, int8 base + checkpointing": {"lora_rank": 8, "base_precision": "int8",
                                        "gradient_checkpointing": True},
}


def options_at_target(backbone: str, preset: str | None, st: Settings, s: Shape) -> dict:
    """Each memory option's estimated training peak at the target, and whether it fits."""
    base = target_case(backbone, preset, st, s)
    out = {}
    for name, change in OPTIONS.items():
        try:
            f = estimate(replace(base, **change))
        except Exception as e:  # a backbone without LoRA targets, say: that option is out
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        out[name] = f.as_dict() | {"fits": f.peak <= st.target_memory}
    return out


def largest_fitting(backbone: str, st: Settings, s: Shape) -> dict | None:
    """The backbone's largest preset (by parameters) whose training fits the target."""
    sizes = {}
    for name in plugins.get("denoiser", backbone).presets:
        try:
            sizes[name] = parameters(backbone, name, replace(s, size=st.target_image_size
                                                             // TARGET_DOWNSAMPLING))
        except Exception:  # a preset for other shapes (a patch size that does not divide)
            continue
    for name in sorted(sizes, key=sizes.get, reverse=True):
        if sizes[name] * STATE_BYTES > st.target_memory:
            continue  # its weights, gradients, AdamW moments and EMA alone exceed the target
        est = at_target(backbone, name, st, s)
        if est.get("fits"):
            return {"preset": name, "parameters": sizes[name], "peak": est["peak"]}
    return None


def log_rows(run: Path) -> list[dict]:
    path = run / LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def loss_spikes(losses: list[float]) -> int:
    """Logged losses above SPIKE x the median of the five logged before them."""
    return sum(1 for i in range(5, len(losses))
               if losses[i] > SPIKE * statistics.median(losses[i - 5:i]))


def arm_picture(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Up to 10 labels x SHOWN samples, a row per label."""
    keep = [i for i in range(len(labels)) if int(labels[i]) < 10 and
            int((labels[:i] == labels[i]).sum()) < SHOWN]
    return grid(images[keep], rows=len({int(labels[i]) for i in keep}))


def measure(judge, arm: Arm, run: Path, per_label: int, progress: bool, s: Shape) -> tuple[dict, object]:
    """-> (the arm's numbers, its sample picture)."""
    done = read_json(run / RUN_FILE, "run")
    labels = range(len(judge.data.label_names))
    start = time.perf_counter()
    images, ys = judge.pipe.sample_tensor(labels, per_label, judge.spec, progress=progress)
    sampling = time.perf_counter() - start
    scores, _ = judge.score(images, ys)
    rows = [r for r in log_rows(run) if r.get("stage") == "denoiser" and "loss" in r]
    timing = done.get("timing") or {}
    step_ms = 1000 * timing["step_seconds"] / timing["steps"] if timing.get("steps") else None
    memory_here = peak_mb(case(arm.backbone, arm.preset, s, device=judge.pipe.device.type),
                          ("train",))["train"]
    return {
        "arm": arm.as_dict(), "run_dir": str(run),
        "parameters": done["parameters"]["total"], "steps": done["steps"]["denoiser"],
        "label_accuracy": scores["label_accuracy"], "fid": scores["fid"], "kid": scores["kid"],
        "kid_std": scores["kid_std"],
        "fid_features": scores["fid_features"], "fid_real_vs_real": scores["fid_real_vs_real"],
        "diversity": scores["diversity"], "real_diversity": scores["real_diversity"],
        "near_copy_share": scores["memorization"]["features"]["near_copy_share"],
        "loss_spikes": loss_spikes([r["loss"] for r in rows]),
        "skipped_nonfinite": rows[-1].get("skipped_nonfinite", 0) if rows else 0,
        "step_ms": None if step_ms is None else round(step_ms, 2),
        "train_minutes": round(timing.get("step_seconds", 0) / 60, 2),
        "sampling_ms_per_image": round(1000 * sampling / len(images), 2),
        "peak_memory_here_mib": round(memory_here, 1),
        "peak_memory_here_kind": "max allocated (CUDA)" if torch.cuda.is_available()
        else "peak RSS (CPU)",
    }, arm_picture(images, ys)


def check_complete(run: Path, name: str) -> None:
    if not (run / RUN_FILE).is_file():
        raise UdiffError(f"--collect: arm {name} in {run} has not finished (no {RUN_FILE}); "
                         "run its line of commands.txt first")
