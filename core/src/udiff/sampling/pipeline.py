"""Load a run and sample from it: ``udiff.load(run_dir).sample(labels=[0, 3], per_label=8)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import plugins
from ..context import Context
from ..errors import UdiffError
from ..images import to_pil
from ..plugins.assembly import assemble
from ..run.directory import component_of, load_component, loader
from ..run.files import read_json
from ..run.layout import RUN_FILE
from ..schedulers import Scheduler


class Pipeline:
    """Autoencoder + conditioner + denoiser + scheduler of one run, ready to sample."""

    def __init__(self, autoencoder: nn.Module, denoiser: nn.Module, conditioner: nn.Module,
                 scheduler_name: str, scheduler_config, label_names: list[str],
                 scaling_factor: float, context: Context, freeze: bool = True) -> None:
        self.autoencoder, self.denoiser, self.conditioner = autoencoder, denoiser, conditioner
        self.scheduler_name, self.scheduler_config = scheduler_name, scheduler_config
        self.label_names, self.scaling_factor, self.context = label_names, scaling_factor, context
        self.latent_shape = (context.latent_channels, context.latent_size, context.latent_size)
        for m in (autoencoder, denoiser, conditioner):
            m.eval()
            if freeze:  # freeze=False: modules still in training (validation samples from them)
                m.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "cpu") -> Pipeline:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UdiffError(f"run directory {run_dir} does not exist")
        if not (run_dir / RUN_FILE).is_file():
            raise UdiffError(f"run directory {run_dir} is incomplete (no {RUN_FILE}: training "
                             "did not finish)")
        run = read_json(run_dir / RUN_FILE, f"run {run_dir}")
        ctx = Context(**run["context"])  # holds the latent shape already
        autoencoder, ae_meta = load_component(run_dir / "autoencoder", "autoencoder", ctx)
        stack = assemble(ctx, loader(run_dir / "denoiser", "denoiser"),
                         loader(run_dir / "conditioner", "conditioner"))
        comp, sched_cfg, _ = component_of(run_dir / "scheduler", "scheduler")
        pipe = cls(autoencoder, stack.denoiser, stack.conditioner, comp.name, sched_cfg,
                   run["labels"], ae_meta["scaling_factor"], stack.context)
        pipe.run_dir = run_dir
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
        trained = plugins.get("scheduler", self.scheduler_name)
        comp = plugins.get("scheduler", name or self.scheduler_name)
        if comp.meta.family != trained.meta.family:
            raise UdiffError(f"scheduler {comp.name!r} ({comp.meta.family}) cannot sample "
                             f"a model trained with {trained.name!r} ({trained.meta.family})")
        return comp.build(comp.make_config(options=self.scheduler_config.model_dump()),
                          self.context)

    def check_labels(self, labels) -> torch.Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        bad = [int(v) for v in labels if not 0 <= v < len(self.label_names)]
        if bad:
            raise UdiffError(f"label {bad[0]} out of range: this run has labels 0..."
                             f"{len(self.label_names) - 1} ({', '.join(self.label_names[:10])})")
        return labels

    @torch.no_grad()
    def denoise(self, labels: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float,
                scheduler: Scheduler, generator: torch.Generator | None = None,
                progress: bool = False) -> torch.Tensor:
        """Latents ``[B, c, h, w]`` from initial ``noise`` of the same shape."""
        device = self.device
        scheduler.set_timesteps(steps, device=device)
        cfg = guidance != 1.0
        ids = torch.cat([labels, self.conditioner.null(len(labels))]) if cfg else labels
        cond = self.conditioner(ids.to(device))
        x = noise.to(device) * scheduler.init_noise_sigma
        for t in tqdm(scheduler.timesteps, desc="sampling", leave=False, disable=not progress):
            inp = scheduler.scale_model_input(torch.cat([x, x]) if cfg else x, t)
            out = self.denoiser(inp, t.expand(len(inp)), cond)[:, : x.shape[1]]
            if cfg:
                c, u = out.chunk(2)
                out = u + guidance * (c - u)
            x = scheduler.step(out, t, x, generator=generator)
        return x

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents / self.scaling_factor).clamp(-1, 1)

    def sample_tensor(self, labels, per_label: int = 8, steps: int = 50, guidance: float = 3.0,
                      seed: int = 0, scheduler: str | None = None, batch: int = 256,
                      progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[N, C, H, W]`` in [-1, 1] and their labels ``[N]``, label-major."""
        labels = self.check_labels(labels).repeat_interleave(per_label)
        sched = self.scheduler(scheduler)
        # Noise as diffusers' randn_tensor draws it on CPU: one generator, whole batch shape.
        gen = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((len(labels), *self.latent_shape), generator=gen)
        out = []
        for i in tqdm(range(0, len(labels), batch), desc="sampling", disable=not progress):
            lat = self.denoise(labels[i:i + batch], noise[i:i + batch], steps, guidance, sched,
                               generator=gen)
            out.append(self.decode(lat).cpu())
        return torch.cat(out), labels

    def sample(self, labels, per_label: int = 8, steps: int = 50, guidance: float = 3.0,
               seed: int = 0, scheduler: str | None = None):
        """PIL images, ``per_label`` for each label in order."""
        return to_pil(self.sample_tensor(labels, per_label, steps, guidance, seed, scheduler)[0])


def load(run_dir: str | Path, device: str = "cpu") -> Pipeline:
    return Pipeline.from_run(run_dir, device)
