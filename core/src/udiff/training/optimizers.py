"""The denoiser's optimizer: torch's AdamW, or 8-bit AdamW from bitsandbytes.

bitsandbytes, not torchao: it is what the trainers udiff's users compare it with run
(kohya sd-scripts, SimpleTuner, OneTrainer, ai-toolkit), its 8-bit state is plain tensors (uint8
moments, fp32 block maxima and code tables) that a checkpoint writes to safetensors and reads back
exactly, and version 0.50 runs it on the CPU as well as on CUDA. torchao's 8-bit AdamW keeps its
state in tensor subclasses and compiles its step (10 s on the first step here).

``paged_adamw8bit`` is the offload option: on CUDA its state lives in paged (unified) memory
that the driver moves to host RAM when the GPU runs short; on the CPU it is plain AdamW8bit.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import UdiffError

OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")
EXTRA = "pip install 'udiff-core[lowmem]'"
# bitsandbytes keeps tensors of fewer elements than this in 32-bit state; 8-bit state is quantized
# in blocks of BLOCK elements, each with an fp32 maximum; a 256-entry fp32 code table per moment
MIN_8BIT, BLOCK, CODE = 4096, 256, 256


def require(name: str) -> None:
    """One line when ``name``'s library is missing."""
    if name != "adamw":
        try:
            _bnb()
        except ImportError:
            raise UdiffError(f"--optimizer {name} needs bitsandbytes: {EXTRA}") from None


def _bnb():
    import bitsandbytes

    return bitsandbytes


def make(name: str, params: list[torch.nn.Parameter], lr: float,
         weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    require(name)
    bnb = _bnb()
    cls = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw8bit": bnb.optim.PagedAdamW8bit}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "paged: CUDA only" on the CPU
        return cls(params, lr=lr, weight_decay=weight_decay)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer state's tensor bytes, counted (a storage shared by several parameters --
    bitsandbytes' code tables -- once; step counts excluded)."""
    storages = {}
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.numel() > 1:
                storages[v.untyped_storage().data_ptr()] = v.numel() * v.element_size()
    return sum(storages.values())


def expected_bytes(name: str, sizes: list[int]) -> int:
    """The state bytes ``name`` allocates for parameters of ``sizes`` elements (what
    :func:`state_bytes` counts after the first step; the memory estimate's figure)."""
    if name == "adamw":
        return sum(8 * n for n in sizes)  # two fp32 moments
    small = [n for n in sizes if n < MIN_8BIT]
    large = [n for n in sizes if n >= MIN_8BIT]
    # two moments: uint8 values and an fp32 maximum per block; two shared code tables
    return 8 * sum(small) + sum(2 * (n + 4 * -(-n // BLOCK)) for n in large) + \
        (2 * 4 * CODE if large else 0)


def on_device_bytes(name: str, sizes: list[int]) -> int:
    """What the state needs in the accelerator's memory: paged state can all move to the host."""
    return 0 if name.startswith("paged_") else expected_bytes(name, sizes)
