"""Few-step distillation (`udiff distill`; docs/distillation.md).

The student learns the teacher's deterministic guided trajectories: for each pair (z, x0*) the
states a few-step deterministic sampler visits are add_noise(x0*, z, t) at its K timesteps, so
the host's ordinary objective on (x0*, z, t) trains it."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from .. import plugins
from ..config import resolve
from ..errors import UdiffError
from ..plugins import defaults
from ..run.directory import complete_run
from ..run.files import atomic_write
from ..run.layout import CONFIG, PAIRS, WEIGHTS
from ..sampling import load
from ..weights import lora
from ..weights.lora import fingerprint
from .setup import say


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
def teacher_pairs(pipe, count: int, steps: int, guidance: float, sampler: str | None,
                  seed: int, batch: int = 256, **guiding) -> tuple[torch.Tensor, ...]:
    """``count`` (noise z [N, c, h, w], guided teacher latents x0 [N, c, h, w], labels [N]),
    labels cycling over the run's labels, noise from one seeded generator."""
    labels = torch.arange(count) % len(pipe.label_names)  # [N]
    gen = torch.Generator("cpu").manual_seed(seed)
    z = torch.randn((count, *pipe.latent_shape), generator=gen)  # [N, c, h, w]
    sched = pipe.scheduler(sampler)
    x0 = torch.cat([pipe.denoise(labels[i:i + batch], z[i:i + batch], steps, guidance, sched,
                                 **guiding) for i in range(0, count, batch)])
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
    trained = defaults.scheduler_choice(cfg)
    family = defaults.family(trained.name)
    # config.toml writes every sampling field, so its guidance alone says nothing; an interval
    # is only there when chosen (the demo), and then with its guidance.
    own = cfg.sampling
    if guidance is None and own.guidance_interval is not None:
        guidance = own.guidance
    sampler, g = defaults.sampler(trained.name, None, guidance)
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
    values["training"] |= defaults.DISTILL_TRAINING
    values["sampling"] = {"steps": steps, "guidance": 1.0, "scheduler": defaults.FEW_STEP[family]}
    values["distill"] = {"teacher": str(teacher), "steps": steps, "guidance": g,
                         "teacher_sha256": fingerprint(teacher / "denoiser" / WEIGHTS),
                         "teacher_steps": cfg.sampling.steps,
                         "pairs": pairs or defaults.DISTILL_PAIRS, "teacher_sampler": sampler,
                         "guidance_interval": own.guidance_interval}
    return resolve(None, overrides, values)


DIVERGED = 3.0  # teacher samples with this std (data: 1) are not images of the data


def pairs(run, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(teacher latents x0 [N, c, h, w], labels [N], noise z [N, c, h, w]): sampled by the main
    process once and cached in the run (a resumed run reads them), the others read them."""
    d, path = cfg.distill, run.out / PAIRS
    if run.main and not path.is_file():
        if fingerprint(Path(d.teacher) / "denoiser" / WEIGHTS) != d.teacher_sha256:
            raise UdiffError(f"teacher {d.teacher} changed since this run began (SHA-256 of its "
                             "denoiser weights differs)")
        say(f"distill: {d.pairs} guided samples of the teacher ({d.teacher_steps} steps of "
            f"{d.teacher_sampler}, guidance {d.guidance})")
        teacher = load(d.teacher, run.accelerator.device)
        z, x0, y = teacher_pairs(teacher, d.pairs, d.teacher_steps, d.guidance, d.teacher_sampler,
                                 cfg.training.seed + 5, interval=d.guidance_interval)
        if x0.std() > DIVERGED:  # the cached latents are scaled to unit variance
            say(f"distill: warning: the teacher's samples are far off its training latents (std "
                f"{x0.std():.1f}, the latents' 1.0): an undertrained teacher; the student will "
                "learn what it samples")
        atomic_write(path, lambda p: safetensors.torch.save_file(
            {"x0": x0.contiguous(), "labels": y.contiguous(), "noise": z.contiguous()}, str(p)))
    run.accelerator.wait_for_everyone()
    cache = safetensors.torch.load_file(str(path))
    return cache["x0"], cache["labels"], cache["noise"]


def training_scheduler(scheduler, context, cfg) -> FewStepTimesteps:
    """The run's scheduler drawing its training timesteps from the student's K sampling steps."""
    comp = plugins.get("scheduler", cfg.sampling.scheduler)
    sampler = comp.build(comp.make_config(options=scheduler.config.model_dump()), context)
    return FewStepTimesteps(scheduler, sampler, cfg.distill.steps)


def init_from_teacher(cfg, plan) -> None:
    """The student starts as the teacher: its denoiser module (a LoRA teacher's adapters folded
    in; a LoRA student's are added by the trainer) and its conditioner's state."""
    teacher = load(cfg.distill.teacher)
    module = teacher.denoiser
    if any("lora_" in name for name, _ in module.named_parameters()):
        module = lora.unload(module)
    plan.init = {"module": module.train().requires_grad_(True),
                 "conditioner_state": teacher.conditioner.state_dict()}
