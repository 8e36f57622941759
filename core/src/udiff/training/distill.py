"""Few-step distillation (issue 20; work in progress on this branch, not yet wired or tested).

The student learns the teacher's deterministic guided trajectories: for each pair (z, x0*) the
states a few-step deterministic sampler visits are add_noise(x0*, z, t) at its K timesteps, so
the host's ordinary objective on (x0*, z, t) trains it (docs/distillation-plan.md)."""

from __future__ import annotations

import torch


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
