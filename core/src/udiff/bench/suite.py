"""The benchmark cases (pytest-benchmark). Figures go into ``benchmark.extra_info`` so that
``--benchmark-json`` and ``pytest-benchmark compare`` carry them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ..errors import UdiffError
from . import ratios
from .cases import batch, noise_and_labels, pipeline, size, training, udiff_sample
from .memory import peak_mb

_probes: dict = {}


def memory(case, phase: str) -> float:
    """Both phases of a case come from one fresh subprocess (see udiff.bench.memory)."""
    if case not in _probes:
        _probes[case] = peak_mb(case)
    return _probes[case][phase]

MEMORY_METHOD = {"cpu": "peak RSS of a fresh subprocess above its post-import RSS",
                 "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats"}


def describe(benchmark, case, kind: str, **extra) -> None:
    benchmark.extra_info.update(kind=kind, case=case.id, **case.as_dict(), **size(case),
                                memory_method=MEMORY_METHOD[case.device], **extra)


def test_train_step(benchmark, settings, case):
    """One optimizer step (forward + backward + AdamW, through udiff's training step)."""
    trainer = training(case)
    x0, y = batch(case)
    describe(benchmark, case, "train", peak_mb=memory(case, "train"))
    benchmark.pedantic(trainer.step, args=(x0, y), rounds=settings.rounds, warmup_rounds=1)


def test_sample(benchmark, settings, case):
    """``case.batch`` images, ``case.steps`` steps, CFG on (two denoiser passes per step)."""
    pipe = pipeline(case)
    noise, labels = noise_and_labels(case)
    describe(benchmark, case, "sample", peak_mb=memory(case, "sample"),
             images_per_call=case.batch)
    benchmark.pedantic(udiff_sample, args=(pipe, case, noise, labels),
                       rounds=max(2, settings.rounds // 2), warmup_rounds=1)


def record(benchmark, key: str, measure) -> None:
    """Run ``measure`` once under the benchmark clock; its result is the ratio ``key``."""
    result = {}
    benchmark.pedantic(lambda: result.update(measure()), rounds=1, iterations=1)
    benchmark.extra_info.update(kind="ratio", key=key, **result)


RATIOS = {  # ratios.json key (checkpointing gives two) -> its measurement
    "train_overhead": lambda s: ratios.train_overhead(s.ratio_case(), s.pairs),
    "sample_overhead": lambda s: ratios.sample_overhead(s.ratio_case(), s.pairs),
    "latent_cache_speedup": lambda s: ratios.latent_cache_speedup(s.ratio_case(), s.pairs),
    "checkpointing": lambda s: ratios.checkpointing(s.checkpointing_case(), s.pairs,
                                                    1 if s.quick else ratios.MEMORY_PAIRS),
    "dpm20_vs_ddim50_accuracy_gap": lambda s: ratios.solver_gap(s.gap_backbone(), s.quick,
                                                                s.device),
    "compile_speedup": lambda s: ratios.compile_speedup(s.ratio_case(), s.pairs),
    "lora": lambda s: ratios.lora_memory(s.checkpointing_case(), s.pairs),
    "adamw8bit": lambda s: ratios.optimizer_state(replace(s.ratio_case(), preset="bench")),
    "base_precision": lambda s: ratios.base_memory(  # --quick: int8 only (35 s less)
        precisions=("int8",) if s.quick else ("int8", "fp8")),
}


def measure(key: str, settings) -> dict:
    """A ratio's figures, or ``{"skipped": reason}`` when something it needs is missing here (an
    extra such as peft, a backbone's LoRA targets): the report says why, the rest still runs."""
    try:
        return RATIOS[key](settings)
    except UdiffError as e:
        return {"skipped": str(e)}


@pytest.mark.parametrize("key", RATIOS)
def test_ratio(benchmark, settings, key):
    record(benchmark, key, lambda: measure(key, settings))
