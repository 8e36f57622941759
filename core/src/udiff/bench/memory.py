"""Peak memory of one case's training or sampling, isolated from everything else.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, in process. CPU: a
fresh subprocess per case measures sampling, then training: for each phase it resets the peak
resident set (``/proc/self/clear_refs``) and reports the new peak (``VmHWM``) minus the resident
set right after imports, so weights, gradients, optimizer state and activations all count and no
other case's heap is involved. (Heap that sampling frees and keeps could hide part of a training
peak smaller than sampling's; training holds gradients and optimizer state, so it is larger.)
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import torch

from .cases import Case, batch, noise_and_labels, pipeline, training, udiff_sample

TRAIN_STEPS = 3


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_phase(case: Case, phase: str, steps: int = TRAIN_STEPS) -> None:
    if phase == "train":
        trainer = training(case)
        x0, y = batch(case)
        for _ in range(steps):
            trainer.step(x0, y)
    else:
        pipe = pipeline(case)
        noise, labels = noise_and_labels(case)
        udiff_sample(pipe, case, noise, labels)


PHASES = ("sample", "train")  # in this order: see the module docstring


# glibc keeps a freed block in its heap (resident, unused) when it is below its mmap threshold,
# which rises with every large block freed. A base quantized layer by layer frees hundreds of
# fp32 weights, so its probe would count them all; fixed at 1 MiB, freed tensors leave the
# process -- what a GPU's allocated-bytes counter shows. Used on both sides of such a ratio.
FREED_RETURNED = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def peak_mb(case: Case, phases: tuple[str, ...] = PHASES, steps: int = TRAIN_STEPS,
            freed_returned: bool = False) -> dict[str, float]:
    """Peak memory (MiB) of each phase ("sample", "train") of ``case``; ``steps`` training
    steps; ``freed_returned``: the CPU probe's heap returns freed tensors (FREED_RETURNED)."""
    if case.device == "cuda":
        out = {}
        for phase in phases:
            gc.collect()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run_phase(case, phase, steps)
            torch.cuda.synchronize()
            out[phase] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return out
    env = {**os.environ, **FREED_RETURNED} if freed_returned else None
    proc = subprocess.run([sys.executable, "-m", "udiff.bench.memory", ",".join(phases),
                           json.dumps(case.as_dict()), str(steps)], capture_output=True,
                          text=True, timeout=900, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {case.id} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from .. import plugins

    phases, spec, steps = sys.argv[1].split(","), json.loads(sys.argv[2]), int(sys.argv[3])
    plugins.get("denoiser", spec["backbone"])  # every plugin imported before the baseline
    torch.set_num_threads(torch.get_num_threads())
    base, out = _status_kb("VmRSS"), {}
    for phase in phases:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS now
        run_phase(Case(**spec), phase, steps)
        gc.collect()
        out[phase] = (_status_kb("VmHWM") - base) / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
