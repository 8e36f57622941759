"""Training memory without allocating it: one case's training step run on fake tensors, its live
tensor bytes counted, and the same step measured with ``torch.profiler`` to validate the count.

How the estimate is made: the modules are built under ``FakeTensorMode`` (tensors with shapes,
dtypes and storage sizes but no data), then two optimizer steps run -- the stage-2 step of
:class:`~udiff.training.step.DenoiserTraining`: the objective's loss (under autocast for mixed
precision), backward (recomputing activations with gradient checkpointing), gradient clipping,
AdamW, the EMA. A dispatch mode sees every tensor each op creates and adds its storage's bytes
while the storage lives; the largest sum is the estimate. So parameters, gradients, AdamW's two
moments, the EMA copy, activations kept for backward and the temporaries of each op all count,
as they are live at the moment of the peak. Not counted: allocator rounding and caching, CUDA's
context and kernel workspaces (a few hundred MiB on a GPU), and the data loader.

The real step (accelerate and all) under ``torch.profiler.profile(profile_memory=True)`` records
each allocation and free; the peak of their running sum, from the modules' construction on, is
the measurement the estimate is held to (tests/test_compare.py, ``udiff compare``)."""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from dataclasses import dataclass, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from .. import plugins
from ..training import optimizers
from ..training.objective import Denoising, Draws, objective_loss
from ..training.step import EMA
from ..weights import lora
from .cases import Case, batch, built, training, training_scheduler

STEPS = 2  # the first creates AdamW's moments; the second runs with them live


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive now (``live``) and at most (``peak``), counted from
    every op's outputs; a storage counts once, however many views share it."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage not in self.seen:
                    size = self.seen[storage] = storage.nbytes()
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


@dataclass(frozen=True)
class Footprint:
    """Bytes: the estimated peak, and what of it the training state holds."""

    peak: int
    parameters: int
    gradients: int
    optimizer: int
    ema: int

    @property
    def activations(self) -> int:
        """The rest of the peak: activations kept for backward and the ops' temporaries."""
        return max(0, self.peak - self.parameters - self.gradients - self.optimizer - self.ema)

    def as_dict(self) -> dict:
        return {"peak": self.peak, "parameters": self.parameters, "gradients": self.gradients,
                "optimizer": self.optimizer, "ema": self.ema, "activations": self.activations}


@contextlib.contextmanager
def _valueless_adamw_steps():
    """AdamW reads its step count with ``.item()``, which a fake tensor cannot answer; the
    count changes no size, so it reads 1 here."""
    import torch.optim.adam as adam
    from torch._subclasses.fake_tensor import FakeTensor

    original = adam._get_value
    adam._get_value = lambda x: 1.0 if isinstance(x, FakeTensor) else original(x)
    try:
        yield
    finally:
        adam._get_value = original


def _nbytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def estimate(case: Case, seed: int = 0) -> Footprint:
    """The peak live tensor bytes of ``case``'s training, allocating nothing. The memory
    options are counted from the fp32 AdamW step: the optimizer's state as
    :func:`udiff.training.optimizers.on_device_bytes` gives it (8-bit: counted the way
    bitsandbytes allocates; paged: none on the device), and a frozen base's Linear and Conv2d
    weights at 1 byte (int8, fp8: plus an fp32 scale per output channel) or 2 (bf16) instead of
    4, with one layer's fp32 weight back for the moment it is dequantized. Both are live through
    the whole step, so the peak moves by what they save."""
    full, trained = estimate_fp32(
        replace(case, optimizer="adamw", base_precision="fp32", lora_rank=0), seed)
    layers, frozen_numel = [], 0  # a full fine-tune freezes nothing
    if case.lora_rank:  # from the full fine-tune's step: see lora_footprint
        full, trained, layers, frozen_numel = lora_footprint(full, case)
    optimizer = optimizers.on_device_bytes(case.optimizer, trained)
    weights = full.parameters - _frozen_saving(layers, frozen_numel, case.base_precision)
    saved = full.optimizer - optimizer + full.parameters - weights
    return replace(full, peak=full.peak - saved, parameters=weights, optimizer=optimizer)


def lora_footprint(full: Footprint, case: Case):
    """A LoRA step's footprint from the full fine-tune's: the base's gradients, AdamW moments and
    EMA copy go, the adapters' (rank x (in + out) per adapted Linear) come; the activations are
    the full step's, an upper bound (a frozen layer's backward keeps no input for its weight's
    gradient). peft's adapters cannot be built on fake tensors, hence the count. -> (footprint,
    trained sizes, frozen layer shapes, frozen parameter count)."""
    with torch.device("meta"):
        denoiser, conditioner, _ = built(replace(case, device="meta", lora_rank=0))
    targets = lora.targets(plugins.get("denoiser", case.backbone), ["attention"])
    adapted = {name for name, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear)
               and any(name == t or name.endswith("." + t) for t in targets)}
    adapters = [case.lora_rank * n for name, m in denoiser.named_modules() if name in adapted
                for n in (m.in_features, m.out_features)]
    trained = adapters + [p.numel() for p in conditioner.parameters()]
    dropped = full.gradients + full.optimizer + full.ema
    kept = sum(trained) * (4 + 4 + 8 + 4)  # weights, gradients, two moments, EMA
    frozen = [tuple(m.weight.shape) for m in denoiser.modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    numel = sum(p.numel() for p in denoiser.parameters())
    base = full.parameters - 4 * sum(p.numel() for p in conditioner.parameters())
    lora_fp = Footprint(full.peak - dropped + kept, base + 4 * sum(trained), 4 * sum(trained),
                        8 * sum(trained), 4 * sum(trained))
    return lora_fp, trained, frozen, numel


def _frozen_saving(layers: list[tuple], numel: int, precision: str) -> int:
    """fp32 bytes a frozen base at ``precision`` does not hold: bf16 halves its ``numel``
    parameters; int8/fp8 store the Linear and Conv2d weights of shapes ``layers`` in a byte and
    an fp32 scale per output channel, less the largest one's fp32 copy (dequantized as it
    runs)."""
    if precision == "fp32":
        return 0
    if precision == "bf16":
        return 2 * numel
    sizes = [(math.prod(shape), shape[0]) for shape in layers]
    return sum(3 * n - 4 * out for n, out in sizes) - max((4 * n for n, _ in sizes), default=0)


def estimate_fp32(case: Case, seed: int = 0) -> tuple[Footprint, list[int]]:
    """:func:`estimate` of a full fine-tune with torch's AdamW: the step run on fakes; also the
    trained parameters' sizes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cuda, case = case.device == "cuda", replace(case, device="cpu")  # fake: any device
    # its tables are real (a scheduler may compute them from data); tiny, not counted
    scheduler = training_scheduler(case)
    precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(case.mixed_precision)
    with FakeTensorMode(allow_non_fake_inputs=True), _valueless_adamw_steps(), \
            torch.random.fork_rng(devices=[]), warnings.catch_warnings(), LiveBytes() as live:
        warnings.simplefilter("ignore", UserWarning)  # CPU autocast's fused-kernel notices
        denoiser, conditioner, scheduler = built(case, seed, scheduler)
        if case.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        model = Denoising(denoiser, conditioner)
        params = [p for p in model.parameters() if p.requires_grad]
        # torch's default: AdamW loops over tensors on CPU, groups them (foreach) on CUDA
        opt = torch.optim.AdamW(params, lr=1e-4, foreach=cuda)
        ema = EMA(params, 0.999)
        draws, null = Draws(seed), case.labels  # the label conditioner's null label
        x0, y = batch(case, seed)
        for step in range(1, STEPS + 1):
            with torch.autocast("cpu", dtype=precision, enabled=precision is not None):
                loss = objective_loss(model, scheduler, x0, y, 0.0, draws, null,
                                      float(getattr(conditioner, "dropout", 0.0)))
            loss.backward()
            grads = _nbytes(p.grad for p in params)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(params, step)
        state = [v for s in opt.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor) and v.numel() > 1]
        return Footprint(live.peak, _nbytes(model.parameters()), grads, _nbytes(state),
                         _nbytes(ema.shadow)), [p.numel() for p in params]


def profiled(case: Case, seed: int = 0) -> int:
    """The peak live tensor bytes ``torch.profiler`` records for the real training step of
    ``case`` (DenoiserTraining through accelerate), from building the modules on: the peak of
    the running sum of its allocation and free events on the case's device."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if case.device == "cuda"
                                           else [])
    with torch.random.fork_rng(devices=[]), profile(activities=activities,
                                                    profile_memory=True) as prof:
        step = training(case, seed)
        x0, y = batch(case, seed)
        for _ in range(STEPS):
            step.step(x0, y)
        del step, x0, y
    kind = torch.device(case.device).type
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type().name.lower() == kind)
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak
