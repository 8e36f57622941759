"""How to sample, as one frozen value: :class:`SamplingSpec`. A run's ``[sampling]`` table is its
complete default (:func:`run_spec`); a caller's overrides replace fields of it once
(``Pipeline.spec(**overrides)``), and the CLI, the judge, the server's work items and the sweeps
carry the result unchanged. Imports no torch (the CLI's help reads :data:`SAMPLERS`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..config import DistillConfig, TrainConfig
from ..plugins import assembly

# Sampling per objective family, measured (docs/your-data.md: "Defaults from measurement"): DPM-Solver++ at
# CFG 6, 50 steps, for noise prediction; Euler 20 steps for rectified flow, whose velocity
# guidance collapses diversity when applied on every step -- CFG 1.5 only for t/T in [0.2, 0.8]
# had the lowest FID with every backbone >= 0.95 accurate on the digits (FID 4.3-5.1) and on the
# font set (0.98, FID 17 vs 30 at CFG 2). A run's `[sampling]` names its own when it chose.
SAMPLERS: dict[str, dict[str, Any]] = {
    "noise": {"scheduler": "dpm++", "guidance": 6.0, "steps": 50, "interval": None},
    "flow": {"scheduler": "flow", "guidance": 1.5, "steps": 20, "interval": (0.2, 0.8)},
}
FALLBACK_GUIDANCE = 3.0  # a family udiff has no measured default for
# The few-step sampler per family: Euler on evenly spaced sigmas (flow); DDIM "trailing" (noise).
FEW_STEP = {"flow": "few-step", "noise": "ddim"}


@dataclass(frozen=True)
class SamplingSpec:
    """Everything one sampling call depends on besides the labels and the model."""

    sampler: str  # a scheduler of the run's objective family
    steps: int
    guidance: float  # classifier-free guidance scale; 1 = off (one forward pass per step)
    interval: tuple[float, float] | None = None  # guide only for t/T in [lo, hi]; None: always
    rescale: float = 0.0  # guidance rescale, 0..1
    seed: int = 0  # of the initial noise

    def but(self, **overrides) -> SamplingSpec:
        """This spec with the given fields replaced; ``None`` keeps a field as it is."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown sampling option(s) {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(names))})")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "interval" in given:
            given["interval"] = tuple(float(x) for x in given["interval"])
        return replace(self, **given)

    def batch_key(self) -> tuple:
        """Specs with equal keys may share one denoiser batch (each row keeps its own noise)."""
        return self.sampler, self.steps, self.guidance, self.interval, self.rescale

    def settings(self) -> dict:
        """The keys ``udiff eval``'s metrics (and the sweeps) record."""
        return {"steps": self.steps, "scheduler": self.sampler, "guidance": self.guidance,
                "guidance_interval": list(self.interval) if self.interval else None,
                "guidance_rescale": self.rescale, "seed": self.seed}


def family_default(trained_with: str) -> SamplingSpec:
    """The spec measured for the family of a run trained with ``trained_with``."""
    d = SAMPLERS.get(assembly.family(trained_with), {"scheduler": trained_with, "steps": 50,
                                                     "guidance": FALLBACK_GUIDANCE})
    return SamplingSpec(d["scheduler"], d["steps"], d["guidance"], d.get("interval"))


def family_sampler(trained_with: str) -> tuple[str, float]:
    """(sampler, guidance) measured for the family of a run trained with ``trained_with``."""
    d = family_default(trained_with)
    return d.sampler, d.guidance


def run_spec(cfg: TrainConfig) -> SamplingSpec:
    """How a run samples when a caller does not say: its ``[sampling]`` table, field by field;
    what it leaves out (sampler, steps, guidance, interval) its objective family's measured
    default. An interval of [0, 1] guides every step."""
    own = cfg.sampling
    d = family_default(assembly.scheduler_choice(cfg).name)
    guidance = d.guidance if own.guidance is None else own.guidance
    interval = tuple(own.guidance_interval) if own.guidance_interval else (
        d.interval if guidance != 1 else None)  # unguided (a student): no interval to keep
    return SamplingSpec(own.scheduler or d.sampler, own.steps or d.steps, guidance, interval,
                        own.guidance_rescale)


def teacher_spec(d: DistillConfig) -> SamplingSpec:
    """How a student's teacher sampled the pairs it learnt from (its ``[distill]`` table)."""
    return SamplingSpec(d.teacher_sampler, d.teacher_steps, d.guidance,
                        tuple(d.guidance_interval) if d.guidance_interval else None,
                        d.guidance_rescale)
