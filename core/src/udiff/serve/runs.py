"""The runs a server holds: loaded once (LoRA runs of one base share it, see
:class:`udiff.run.directory.Shared`), described for ``GET /v1/runs``, and the check that turns a
request into :class:`Work` for one of them."""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UdiffError
from ..plugins import registry
from ..plugins.assembly import family
from ..run.directory import Shared, complete_run
from ..run.files import read_json
from ..run.layout import RUN_FILE
from ..sampling.guidance import valid_interval
from ..sampling.pipeline import Pipeline
from .schema import ApiError, GenerateRequest, Limits, Work


@dataclass
class ServedRun:
    name: str
    path: Path
    pipe: Pipeline
    backbone: str

    def describe(self, allowed: frozenset[int] | None = None) -> dict:
        """``allowed``: the label indices a key may use (None: every label)."""
        pipe = self.pipe
        indices = sorted(allowed) if allowed is not None else list(range(len(pipe.label_names)))
        return {"name": self.name, "backbone": self.backbone,
                "objective": {"scheduler": pipe.scheduler_name,
                              "family": family(pipe.scheduler_name)},
                "labels": [pipe.label_names[i] for i in indices], "label_indices": indices,
                "image_size": pipe.context.image_size,
                "image_channels": pipe.context.image_channels,
                "lora": pipe.adapter is not None,
                "defaults": {"steps": pipe.sampling.steps, "sampler": pipe.sampling.sampler,
                             "guidance": pipe.sampling.guidance}}  # as `udiff eval` samples

    def samplers(self) -> list[str]:
        """The registered schedulers of this run's objective family (what `sampler` may be)."""
        own = family(self.pipe.scheduler_name)
        return sorted(n for n, c in registry().components["scheduler"].items()
                      if c.meta.family == own)

    def work(self, req: GenerateRequest, limits: Limits, allowed: frozenset[int] | None = None,
             key: str | None = None) -> Work:
        """The request checked against this run, the key's labels (``allowed``; None: every
        label) and the limits; errors name the field."""
        names = self.pipe.label_names
        labels = []
        for value in req.labels:
            index = (names.index(value) if isinstance(value, str) and value in names
                     else value if isinstance(value, int) and 0 <= value < len(names) else None)
            if allowed is not None and index not in allowed:  # unknown or not the key's: alike
                raise ApiError(403, "forbidden", f"key {key!r} may not use label {value!r} of "
                               f"run {self.name!r}; its labels there: " + ", ".join(
                                   f"{i} ({names[i]})" for i in sorted(allowed)), "labels")
            if index is None:
                raise ApiError(422, "unknown_label", f"label {value!r} is not one of run "
                               f"{self.name!r}'s labels: indices 0..{len(names) - 1} or names "
                               f"{', '.join(names[:10])}", "labels")
            labels.append(index)
        total = len(labels) * req.per_label
        if total > limits.max_images:
            raise ApiError(422, "too_many_images", f"{len(labels)} labels x per_label "
                           f"{req.per_label} = {total} images; this server allows at most "
                           f"{limits.max_images} per request", "per_label")
        interval = req.guidance_interval
        if interval is not None and not valid_interval(interval):
            raise ApiError(422, "out_of_range", f"guidance_interval {list(interval)} needs "
                           "0 <= lo <= hi <= 1", "guidance_interval")
        seed = req.seed if req.seed is not None else random.randrange(2**31)
        spec = self.pipe.sampling.but(sampler=req.sampler, steps=req.steps, guidance=req.guidance,
                                      interval=interval, rescale=req.guidance_rescale, seed=seed)
        if spec.steps > limits.max_steps:
            raise ApiError(422, "out_of_range", f"steps {spec.steps} is over this server's limit "
                           f"{limits.max_steps}", "steps")
        if spec.guidance > limits.max_guidance:
            raise ApiError(422, "out_of_range", f"guidance {spec.guidance} is over this server's "
                           f"limit {limits.max_guidance}", "guidance")
        try:  # unknown, or of the other objective family (checked, not built)
            sampler = self.pipe.sampler_component(spec.sampler)
        except UdiffError as e:
            raise ApiError(422, "unknown_sampler", str(e), "sampler") from None
        per_image = tuple(x for x in labels for _ in range(req.per_label))
        return Work(self.name, per_image, req.per_label, spec, sampler.meta.stochastic)


def check(dirs: list[str | Path]) -> list[Path]:
    """The run folders, or one line on the first that cannot be served (before any loading)."""
    paths, names = [complete_run(d) for d in dirs], {}
    for path in paths:
        name = path.resolve().name
        if name in names:
            raise UdiffError(f"runs {names[name]} and {path} are both named {name!r}: each run "
                             "is served under its folder name; rename one")
        names[name] = path
    return paths


def label_names(paths: list[Path]) -> dict[str, list[str]]:
    """Each run's label names from its run.json: what a keys file is checked against before
    any model is loaded (its faults are one line, before anything is printed or listens)."""
    return {p.resolve().name: read_json(p / RUN_FILE, "run")["labels"] for p in paths}


def load(dirs: list[str | Path], device: str = "cpu",
         limits: Limits | None = None) -> dict[str, ServedRun]:
    """Every run, loaded once (and checked against ``limits``), a line each as it loads."""
    shared, runs = Shared(), {}
    for path in check(dirs):
        start = time.perf_counter()
        pipe = Pipeline.from_run(path, device, shared=shared)
        name, backbone = path.resolve().name, pipe.config.denoiser.name
        runs[name] = ServedRun(name, path, pipe, backbone)
        if limits is not None:
            check_limits(runs[name], limits)
        print(f"udiff serve: loaded {name} ({backbone}"
              f"{', LoRA on a shared base' if pipe.adapter else ''}) in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return runs


def check_limits(run: ServedRun, limits: Limits) -> None:
    """A run whose own default the limits refuse would answer 422 to a request that leaves the
    field out: one line at startup instead."""
    spec = run.pipe.sampling
    if spec.steps > limits.max_steps:
        raise UdiffError(f"--max-steps {limits.max_steps} is below the default of run {run.name!r}: "
                         f"{spec.steps} steps; raise it")
    if spec.guidance > limits.max_guidance:
        raise UdiffError(f"run {run.name!r}'s default guidance {spec.guidance} is over the "
                         f"server's limit {limits.max_guidance}")


def warm_up(runs: dict[str, ServedRun]) -> None:
    """One short sample per run: first-call costs (allocator, kernels) before /readyz says ready."""
    for run in runs.values():
        run.pipe.sample_tensor([0], per_label=1, steps=2, seed=0)


def parameter_bytes(runs: dict[str, ServedRun]) -> int:
    """Bytes of every parameter and buffer the runs hold, each stored tensor counted once."""
    seen, total = set(), 0
    for run in runs.values():
        for module in (run.pipe.autoencoder, run.pipe.denoiser, run.pipe.conditioner):
            for t in [*module.parameters(), *module.buffers()]:
                key = (t.untyped_storage().data_ptr(), t.device)
                if key not in seen:
                    seen.add(key)
                    total += t.untyped_storage().nbytes()
    return total


def device_of(name: str) -> str:
    """``auto``: CUDA when there is one; an unusable choice is one line."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UdiffError(f"--device {name}: no CUDA device here")
    return name
