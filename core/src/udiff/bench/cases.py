"""One benchmark case (backbone x preset x batch): its modules, and the steps the suite times.

The training step is :class:`udiff.training.step.DenoiserTraining` (what ``udiff train`` runs)
and sampling is :meth:`udiff.sampling.Pipeline.denoise` (what ``udiff sample`` runs); the bare
baselines below call the same modules, optimizer and diffusers scheduler directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from .. import plugins
from ..config import TrainingConfig
from ..context import Context
from ..evaluation.size import forward_macs
from ..plugins.assembly import Part, assemble
from ..sampling import Pipeline
from ..sampling.spec import SamplingSpec, family_sampler
from ..training.objective import Draws
from ..training.step import DenoiserTraining
from ..weights import lora, quantize

LABELS = 10


@dataclass(frozen=True)
class Case:
    backbone: str
    preset: str | None
    batch: int
    device: str = "cpu"
    latent_size: int = 8  # latents [4, s, s]: 16x16 images through the demo's 2x autoencoder
    scheduler: str = "ddpm"  # training objective
    sampler: str | None = None  # default: the objective family's (sampling/spec.py)
    steps: int = 10  # sampling steps per image
    guidance: float = 3.0
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # accelerate's: "no", "bf16", "fp16"
    lora_rank: int = 0  # > 0: peft LoRA adapters on the attention projections, base frozen
    latent_channels: int = 4
    labels: int = LABELS
    optimizer: str = "adamw"  # training.optimizer: adamw, adamw8bit, paged_adamw8bit
    base_precision: str = "fp32"  # a LoRA base stored as fp32, bf16, int8 or fp8

    @property
    def id(self) -> str:
        ckpt = "-ckpt" if self.gradient_checkpointing else ""
        lora = f"-lora{self.lora_rank}" if self.lora_rank else ""
        opt = "" if self.optimizer == "adamw" else f"-{self.optimizer}"
        base = "" if self.base_precision == "fp32" else f"-{self.base_precision}"
        return f"{self.backbone}-{self.preset}-b{self.batch}{ckpt}{lora}{base}{opt}"

    def as_dict(self) -> dict:
        return asdict(self)


def context(case: Case) -> Context:
    return Context(image_channels=1, image_size=case.latent_size * 2,
                   latent_channels=case.latent_channels, latent_size=case.latent_size,
                   num_labels=case.labels)


def modules(case: Case, seed: int = 0):
    """(denoiser, conditioner, training scheduler) on the case's device."""
    denoiser, conditioner, scheduler = built(case, seed)
    return denoiser.to(case.device), conditioner.to(case.device), scheduler


def built(case: Case, seed: int = 0, scheduler=None):
    """(denoiser, conditioner, training scheduler) where torch creates them (fake tensors under
    a FakeTensorMode, which cannot be moved); ``scheduler``: one built already."""
    torch.manual_seed(seed)
    comp = plugins.get("denoiser", case.backbone)
    part = Part(comp, comp.make_config(case.preset))
    # a LoRA base built layer by layer at its precision (quantize.build_frozen): its fp32 copy
    # never exists whole, as when a run reads its base into the device
    make = (lambda c: lora.add(quantize.build_frozen(lambda: part.build(c), case.base_precision),
                               case.lora_rank, None, lora.targets(comp, ["attention"]))
            ) if case.lora_rank else part.build
    lab, sched = plugins.get("conditioner", "label"), plugins.get("scheduler", case.scheduler)
    stack = assemble(context(case), make, Part(lab, lab.make_config()).build,
                     (lambda _: scheduler) if scheduler else Part(sched, sched.make_config()).build)
    return stack.denoiser, stack.conditioner, stack.scheduler


def training_scheduler(case: Case):
    comp = plugins.get("scheduler", case.scheduler)
    return Part(comp, comp.make_config()).build(context(case))


def batch(case: Case, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, s = case.latent_channels, case.latent_size
    x0 = torch.randn(case.batch, c, s, s, generator=g).to(case.device)  # [B, c, s, s]
    y = torch.randint(0, case.labels, (case.batch,), generator=g).to(case.device)  # [B]
    return x0, y


def accelerator(case: Case) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=case.device == "cpu", mixed_precision=case.mixed_precision)


def training(case: Case, seed: int = 0) -> DenoiserTraining:
    """udiff's stage-2 step object for the case (AdamW, warm-up, clipping, EMA)."""
    denoiser, conditioner, scheduler = modules(case, seed)
    t = TrainingConfig(gradient_checkpointing=case.gradient_checkpointing, ema_decay=0.999,
                       optimizer=case.optimizer)
    return DenoiserTraining(accelerator(case), denoiser, conditioner, scheduler, t)


class BareTraining:
    """The hand-written baseline: the same modules, batch, objective, AdamW with linear warm-up,
    clipping and EMA (with its warm-up) as a diffusers training script writes them, with no
    framework in between. ``draws``: take noise, timesteps and label dropout from a
    :class:`~udiff.training.objective.Draws` (the test proves both loops compute the same
    steps); by default the global RNG, as a script would."""

    def __init__(self, case: Case, seed: int = 0, draws: Draws | None = None) -> None:
        self.denoiser, self.conditioner, self.scheduler = modules(case, seed)
        self.params = [p for m in (self.denoiser, self.conditioner) for p in m.parameters()
                       if p.requires_grad]
        t = self.config = TrainingConfig()
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay)
        self.warmup = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / max(1, t.warmup_steps)))
        self.ema = [p.detach().clone() for p in self.params]
        self.draws, self.steps = draws, 0

    def step(self, x0, y) -> float:
        s, d = self.scheduler, self.draws
        noise = d.normal(x0, x0.shape[1:]) if d else torch.randn_like(x0)
        t = d.timesteps(s, x0) if d else s.sample_timesteps(len(x0), x0.device)
        u = d.uniform(y) if d else torch.rand(len(y))
        y = torch.where(u < self.conditioner.dropout, self.conditioner.null(len(y)), y)  # CFG
        pred = self.denoiser(s.add_noise(x0, noise, t), t, self.conditioner(y))[:, : x0.shape[1]]
        loss = F.mse_loss(pred, s.target(x0, noise, t))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.warmup.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        decay = min(self.config.ema_decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        return loss.item()


def spec(case: Case) -> SamplingSpec:
    return SamplingSpec(sampler_name(case), case.steps, case.guidance)


def sampler_name(case: Case) -> str:
    return case.sampler or family_sampler(case.scheduler)[0]


def pipeline(case: Case, seed: int = 0) -> Pipeline:
    """A Pipeline over the case's (untrained) modules; no autoencoder: the suite times the
    denoising loop, where sampling spends its time."""
    denoiser, conditioner, _ = modules(case, seed)
    sched = plugins.get("scheduler", case.scheduler)
    return Pipeline(torch.nn.Identity(), denoiser, conditioner, case.scheduler,
                    sched.make_config(), [str(i) for i in range(case.labels)], 1.0, context(case))


def noise_and_labels(case: Case, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, s = case.latent_channels, case.latent_size
    return (torch.randn(case.batch, c, s, s, generator=g),
            torch.arange(case.batch) % case.labels)


def udiff_sample(pipe: Pipeline, case: Case, noise, labels) -> torch.Tensor:
    return pipe.denoise(labels, noise, spec(case))


@torch.no_grad()
def bare_sample(pipe: Pipeline, case: Case, noise, labels) -> torch.Tensor:
    """The same denoiser and diffusers scheduler in a hand-written CFG loop."""
    sampler = pipe.scheduler(sampler_name(case)).sampler  # the diffusers object itself
    sampler.set_timesteps(case.steps, device=case.device)
    dev = case.device
    cond = pipe.conditioner(torch.cat([labels, torch.full_like(labels, case.labels)]).to(dev))
    x = noise.to(dev) * getattr(sampler, "init_noise_sigma", 1.0)
    for t in sampler.timesteps:
        inp = torch.cat([x, x])
        if hasattr(sampler, "scale_model_input"):
            inp = sampler.scale_model_input(inp, t)
        c, u = pipe.denoiser(inp, t.expand(len(inp)), cond)[:, : x.shape[1]].chunk(2)
        x = sampler.step(u + case.guidance * (c - u), t, x).prev_sample
    return x


def size(case: Case) -> dict:
    """Parameters and MACs of one denoiser forward at batch 1, on the meta device."""
    meta = Case(**{**case.as_dict(), "device": "meta", "batch": 1})
    with torch.device("meta"):
        denoiser, conditioner, _ = modules(meta)
        macs = forward_macs(denoiser, conditioner, context(case))
    return {"params": sum(p.numel() for p in denoiser.parameters()), "macs_per_forward": macs}
