"""Few-step distillation (`udiff distill`; docs/distillation.md).

The student learns the teacher's deterministic guided trajectories: for each pair (z, x0*) the
states a few-step deterministic sampler visits are add_noise(x0*, z, t) at its K timesteps, so
the host's ordinary objective on (x0*, z, t) trains it."""

from __future__ import annotations

import torch

from .. import plugins
from ..config import DISTILL_TRAINING, resolve
from ..errors import UdiffError
from ..plugins import assembly
from ..plugins.assembly import scheduler_choice
from ..run.directory import complete_run
from ..run.layout import CONFIG, WEIGHTS
from ..sampling.spec import FEW_STEP, SamplingSpec, family_sampler, run_spec
from ..weights.lora import fingerprint


class FewStepTimesteps:
    """The teacher's scheduler, drawing training timesteps only from the K it samples on."""
    def __init__(self, scheduler, sampler, steps: int) -> None:
        self.scheduler = scheduler
        sampler.set_timesteps(steps)
        self.choices = sampler.timesteps.detach().cpu().clone()  # [K], high noise first

    def sample_timesteps(self, n: int, device, generator: torch.Generator | None = None):
        idx = torch.randint(len(self.choices), (n,), generator=generator)  # [n]
        return self.choices[idx].to(device)

    def __getattr__(self, name):  # add_noise, target, loss_weight: the teacher's
        return getattr(self.scheduler, name)


@torch.no_grad()
def teacher_pairs(pipe, count: int, spec: SamplingSpec, seed: int,
                  batch: int = 256) -> tuple[torch.Tensor, ...]:
    """``count`` (noise z [N, c, h, w], guided teacher latents x0 [N, c, h, w], labels [N]),
    labels cycling over the run's labels, noise from one seeded generator."""
    labels = torch.arange(count) % len(pipe.label_names)  # [N]
    gen = torch.Generator("cpu").manual_seed(seed)
    z = torch.randn((count, *pipe.latent_shape), generator=gen)  # [N, c, h, w]
    sched = pipe.scheduler(spec.sampler)
    x0 = torch.cat([pipe.denoise(labels[i:i + batch], z[i:i + batch], spec, sched)
                    for i in range(0, count, batch)])
    return z, x0, labels


def student_config(teacher, steps: int, guidance: float | None = None,
                   pairs: int | None = None, overrides: dict | None = None):
    """The student's run config, from the teacher's: its autoencoder (stage 1 skipped), its
    backbone and conditioner (initialised from its weights), its objective (noise teachers teach a
    v-prediction student: an epsilon student cannot take one step), guidance off, K steps;
    ``overrides``: the student's training flags (``commands.flags.DISTILL_FLAGS``)."""
    teacher = complete_run(teacher).resolve()
    cfg = resolve(teacher / CONFIG)
    plugins.get("denoiser", cfg.denoiser.name)  # an unknown backbone: one line naming it
    overrides = overrides or {}
    student_lora = overrides.get("denoiser", {}).get("lora")
    if student_lora and cfg.denoiser.lora:
        raise UdiffError(f"--lora-rank: teacher {teacher} is itself a LoRA run; distil it into "
                         "a full student (without --lora-rank)")
    trained = scheduler_choice(cfg)
    family = assembly.family(trained.name)
    # the teacher samples as it does when not told (its [sampling], else its family's), on a
    # deterministic sampler: pairs are trajectories
    own = run_spec(cfg).but(guidance=guidance)
    if plugins.get("scheduler", own.sampler).meta.stochastic:
        own = own.but(sampler=family_sampler(trained.name)[0])
    options = dict(trained.options)
    if family == "noise":
        options["prediction_type"] = "v_prediction"
    values = cfg.model_dump(mode="json", exclude_none=True)
    values["autoencoder"] = {"from_run": str(teacher)}
    values["denoiser"].pop("init_from", None)
    values["denoiser"].pop("lora", None)
    if student_lora:  # adapters on the teacher's denoiser folder (the LoRA base, by SHA-256)
        values["denoiser"]["init_from"] = str(teacher / "denoiser")
    values["scheduler"] = {"name": trained.name, "options": options}
    values["conditioner"].setdefault("options", {})["dropout"] = 0.0  # never asked unconditioned
    values["training"] |= DISTILL_TRAINING
    values["sampling"] = {"steps": steps, "guidance": 1.0, "scheduler": FEW_STEP[family]}
    values["distill"] = {"teacher": str(teacher), "steps": steps, "guidance": own.guidance,
                         "teacher_sha256": fingerprint(teacher / "denoiser" / WEIGHTS),
                         "teacher_steps": own.steps, "teacher_sampler": own.sampler,
                         "guidance_interval": own.interval, "guidance_rescale": own.rescale}
    if pairs:
        values["distill"]["pairs"] = pairs
    return resolve(None, overrides, values)


def training_scheduler(scheduler, context, cfg) -> FewStepTimesteps:
    """The run's scheduler drawing its training timesteps from the student's K sampling steps."""
    comp = plugins.get("scheduler", cfg.sampling.scheduler)
    sampler = comp.build(comp.make_config(options=scheduler.config.model_dump()), context)
    return FewStepTimesteps(scheduler, sampler, cfg.distill.steps)
