"""Fully sharded training (FSDP2, through accelerate's FSDP plugin): the sharded modules only
train; checkpoints, the saved run and whatever runs on the main process alone see whole tensors.

Under FSDP2 each parameter (and the EMA and optimizer state made from it) is a ``DTensor``
holding this process's shard. Gathering or scattering one is a collective: every process calls
these functions in the same order. Gathered tensors are kept only where ``keep`` is true (the
main process), one at a time, so a model too big for one device is never whole on all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


def units(*modules: nn.Module) -> list[str]:
    """Class names accelerate's FSDP2 wraps as one unit each (``_no_split_modules``): the blocks
    any submodule names -- the diffusers / transformers convention, so a wrapper around a
    diffusers model inherits its blocks. A unit gathers its shards in ``forward`` only."""
    subs = [sub for m in modules for sub in m.modules()]
    named = {n for sub in subs for n in getattr(sub, "_no_split_modules", None) or []}
    present = {type(sub).__name__ for sub in subs}  # a list may name blocks left unused
    return sorted(named & present)


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


def whole(t: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """The full tensor of ``t`` (collective when ``t`` is sharded) on the CPU, or None."""
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu().contiguous() if keep else None


def whole_state(module: nn.Module, keep: bool = True) -> dict[str, torch.Tensor] | None:
    state = {k: whole(v, keep) for k, v in module.state_dict().items()}
    return state if keep else None


def like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` (the whole tensor) sharded the way ``ref`` is; unchanged when ``ref`` is whole."""
    if not isinstance(ref, DTensor):
        return full
    if tuple(full.shape) != tuple(ref.shape):
        raise ValueError(f"shape {tuple(full.shape)} does not match {tuple(ref.shape)}")
    return distribute_tensor(full.to(ref.to_local().device, ref.dtype), ref.device_mesh,
                             ref.placements)


def load_whole_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole (unsharded) state dict into a sharded ``module``, strictly."""
    own = module.state_dict()
    if own.keys() != state.keys():
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        raise ValueError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    module.load_state_dict({k: like(state[k], own[k]) for k in own})


def plain_copy(module: nn.Module, build: Callable[[], nn.Module], keep: bool = True,
               device: torch.device | str = "cpu") -> nn.Module | None:
    """An ordinary module with ``module``'s weights, built by ``build()`` where ``keep`` (the
    sharded one can only run in lock-step with the other processes). Collective."""
    state = whole_state(module, keep)
    if not keep:
        return None
    fresh = build()
    fresh.load_state_dict(state)
    return fresh.to(device).train(module.training)
