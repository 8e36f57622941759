"""Load a run and sample from it: ``udiff.load(run_dir).sample(labels=[0, 3], per_label=8)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import plugins
from ..config import resolve
from ..context import Context
from ..errors import UdiffError
from ..images import to_pil
from ..plugins.assembly import assemble
from ..run.directory import Shared, complete_run, component_of, load_component, loader
from ..run.files import read_json
from ..run.layout import CONFIG, RUN_FILE
from ..scheduler_base import Scheduler
from ..weights import lora
from . import guidance as guiding
from .spec import SamplingSpec, family_default, run_spec


class Pipeline:
    """Autoencoder + conditioner + denoiser + scheduler of one run, ready to sample."""

    def __init__(self, autoencoder: nn.Module, denoiser: nn.Module, conditioner: nn.Module,
                 scheduler_name: str, scheduler_config, label_names: list[str],
                 scaling_factor: float, context: Context, freeze: bool = True,
                 sampling: SamplingSpec | None = None) -> None:
        self.autoencoder, self.denoiser, self.conditioner = autoencoder, denoiser, conditioner
        self.scheduler_name, self.scheduler_config = scheduler_name, scheduler_config
        self.label_names, self.scaling_factor, self.context = label_names, scaling_factor, context
        self.latent_shape = (context.latent_channels, context.latent_size, context.latent_size)
        # what a call leaves out: the run's own (its config's [sampling]); else its family's
        self.sampling = sampling or family_default(scheduler_name)
        for m in (autoencoder, denoiser, conditioner):
            m.eval()
            if freeze:  # freeze=False: modules still in training (validation samples from them)
                m.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    adapter: str | None = None  # the LoRA adapter to apply when the base is shared (the server)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "cpu",
                 shared: Shared | None = None) -> Pipeline:
        """``shared``: reuse modules other runs loaded already (see :class:`Shared`)."""
        run_dir = complete_run(run_dir)
        run = read_json(run_dir / RUN_FILE, f"run {run_dir}")
        ctx = Context(**run["context"])  # holds the latent shape already
        autoencoder, ae_meta = load_component(run_dir / "autoencoder", "autoencoder", ctx, shared)
        den_meta = {}

        def denoiser(context):
            module, den_meta["meta"] = load_component(run_dir / "denoiser", "denoiser", context,
                                                      shared)
            return module

        stack = assemble(ctx, denoiser, loader(run_dir / "conditioner", "conditioner", shared))
        comp, sched_cfg, _ = component_of(run_dir / "scheduler", "scheduler")
        config = resolve(run_dir / CONFIG)
        pipe = cls(autoencoder, stack.denoiser, stack.conditioner, comp.name, sched_cfg,
                   run["labels"], ae_meta["scaling_factor"], stack.context,
                   sampling=run_spec(config))
        pipe.run_dir, pipe.config = run_dir, config  # the run's TrainConfig, read once
        if shared is not None:
            pipe.adapter = den_meta["meta"].get("adapter")
        return pipe.to(device)

    def compile(self) -> Pipeline:
        """``torch.compile`` the denoiser in place (the first sampling call compiles)."""
        self.denoiser.compile()
        return self

    def to(self, device) -> Pipeline:
        for m in (self.autoencoder, self.denoiser, self.conditioner):
            m.to(device)
        return self

    def scheduler(self, name: str | None = None) -> Scheduler:
        """The training scheduler, or another sampler of the same family on the same schedule."""
        comp = self.sampler_component(name or self.scheduler_name)
        return comp.build(comp.make_config(options=self.scheduler_config.model_dump()),
                          self.context)

    def sampler_component(self, name: str):
        """The registered sampler ``name``; one of another objective family is one line."""
        trained = plugins.get("scheduler", self.scheduler_name)
        comp = plugins.get("scheduler", name)
        if comp.meta.family != trained.meta.family:
            raise UdiffError(f"scheduler {comp.name!r} ({comp.meta.family}) cannot sample "
                             f"a model trained with {trained.name!r} ({trained.meta.family})")
        return comp

    def spec(self, **overrides) -> SamplingSpec:
        """The run's own :attr:`sampling` with ``overrides`` (fields of :class:`SamplingSpec`;
        ``None`` keeps the run's), its sampler checked against the run's objective family."""
        spec = self.sampling.but(**overrides)
        self.sampler_component(spec.sampler)
        return spec

    def check_labels(self, labels) -> torch.Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        bad = [int(v) for v in labels if not 0 <= v < len(self.label_names)]
        if bad:
            raise UdiffError(f"label {bad[0]} out of range: this run has labels 0..."
                             f"{len(self.label_names) - 1} ({', '.join(self.label_names[:10])})")
        return labels

    def denoise(self, labels: torch.Tensor, noise: torch.Tensor, spec: SamplingSpec,
                scheduler: Scheduler | None = None, generator: torch.Generator | None = None,
                progress: bool = False) -> torch.Tensor:
        """Latents ``[B, c, h, w]`` from initial ``noise`` of the same shape."""
        loop = Denoising(self, labels, noise, spec, scheduler, generator)
        for t in tqdm(loop.timesteps, desc="sampling", leave=False, disable=not progress):
            loop.step(t)
        return loop.x

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents / self.scaling_factor).clamp(-1, 1)

    def sample_tensor(self, labels, per_label: int = 8, spec: SamplingSpec | None = None,
                      batch: int = 256, progress: bool = False,
                      **overrides) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[N, C, H, W]`` in [-1, 1] and their labels ``[N]``, label-major. ``spec``:
        how (default: the run's own); ``overrides``: fields of it (``steps=``, ``guidance=``,
        ``sampler=``, ``interval=``, ``rescale=``, ``seed=``)."""
        spec = (spec or self.sampling).but(**overrides)
        labels = self.check_labels(labels).repeat_interleave(per_label)
        sched = self.scheduler(spec.sampler)
        # Noise as diffusers' randn_tensor draws it on CPU: one generator, whole batch shape.
        gen = torch.Generator("cpu").manual_seed(spec.seed)
        noise = torch.randn((len(labels), *self.latent_shape), generator=gen)
        out = []
        for i in tqdm(range(0, len(labels), batch), desc="sampling", disable=not progress):
            lat = self.denoise(labels[i:i + batch], noise[i:i + batch], spec, sched, gen)
            out.append(self.decode(lat).cpu())
        return torch.cat(out), labels

    def sample(self, labels, per_label: int = 8, spec: SamplingSpec | None = None, **overrides):
        """PIL images, ``per_label`` for each label in order (as :meth:`sample_tensor`)."""
        return to_pil(self.sample_tensor(labels, per_label, spec, **overrides)[0])


def load(run_dir: str | Path, device: str = "cpu") -> Pipeline:
    return Pipeline.from_run(run_dir, device)


class Denoising:
    """One sampling loop, a step at a time, so that a caller can watch it and drop rows between
    steps (the server cancels one request out of a batch). :meth:`Pipeline.denoise` runs it."""

    def __init__(self, pipe: Pipeline, labels: torch.Tensor, noise: torch.Tensor,
                 spec: SamplingSpec, scheduler: Scheduler | None = None,
                 generator: torch.Generator | None = None):
        scheduler = scheduler or pipe.scheduler(spec.sampler)
        self.pipe, self.spec, self.scheduler, self.generator = pipe, spec, scheduler, generator
        self.guidance = spec.guidance
        # the scale of t: noise-level fractions t / T (1 = pure noise) choose the interval
        self.train_timesteps = getattr(scheduler.config, "num_train_timesteps", 1000)
        if pipe.adapter is not None:
            lora.activate(pipe.denoiser, pipe.adapter)
        scheduler.set_timesteps(spec.steps, device=pipe.device)
        self.timesteps = scheduler.timesteps  # [steps]
        self.x = noise.to(pipe.device) * scheduler.init_noise_sigma  # [B, c, h, w]
        self._condition(labels)

    @torch.no_grad()
    def _condition(self, labels: torch.Tensor) -> None:
        self.labels = labels  # [B]
        conditioner, device = self.pipe.conditioner, self.pipe.device
        self.cond = conditioner(labels.to(device))  # [B, ...]: the conditional pass alone
        self.pair = conditioner(torch.cat([labels, conditioner.null(len(labels))]).to(device)) \
            if self.guidance != 1.0 else None  # [2B, ...]: conditional, then unconditional

    @torch.no_grad()
    def step(self, t: torch.Tensor) -> None:
        x = self.x
        cfg = self.pair is not None and guiding.active(t, self.train_timesteps, self.spec.interval)
        inp = self.scheduler.scale_model_input(torch.cat([x, x]) if cfg else x, t)  # [2B|B, ...]
        out = self.pipe.denoiser(inp, t.expand(len(inp)), self.pair if cfg else self.cond)
        out = out[:, : x.shape[1]]
        if cfg:
            c, u = out.chunk(2)  # [B, ...] each
            out = guiding.guide(c, u, self.guidance, self.spec.rescale)
        self.x = self.scheduler.step(out, t, x, generator=self.generator)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (bool ``[B]``) from now on: of the latents, the labels and every
        per-row tensor the sampler holds (a multistep solver's past outputs)."""
        batch = len(self.x)
        self.x = self.x[rows.to(self.x.device)]
        self._condition(self.labels[rows])
        state = vars(getattr(self.scheduler, "sampler", self.scheduler))
        for name, value in state.items():
            if isinstance(value, list):
                state[name] = [_rows(v, batch, rows) for v in value]
            else:
                state[name] = _rows(value, batch, rows)


def _rows(value, batch: int, rows: torch.Tensor):
    """``value[rows]`` if it is a per-row tensor shaped like the latents ``[B, c, h, w]``; a
    schedule (``timesteps``, ``sigmas``: 1-D) is never one."""
    if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == batch:
        return value[rows.to(value.device)]
    return value
