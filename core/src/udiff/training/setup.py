"""accelerate set-up for one training run: the Accelerator (precision, DDP or FSDP2, trackers),
what each process prepares, and the optional back-ends checked before anything is written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    DistributedType,
    FullyShardedDataParallelPlugin,
    ProjectConfiguration,
)
from torch import nn

from ..config import TrainConfig
from ..errors import UdiffError
from ..plugins.contract import AttentionBackend
from ..run.layout import TENSORBOARD


def say(line: str) -> None:
    """A status line on stderr, from the main process only."""
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(f"udiff: {line}", file=sys.stderr)


def training_on_cpu(t) -> bool:
    return t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())


def fsdp_refusal(setting: str, processes: int) -> UdiffError:
    return UdiffError(f"--fsdp: accelerate shards a model only in a distributed GPU run (or "
                      f"other accelerators), started with --num-processes N on N GPUs; this run "
                      f"is {setting} with {processes} process(es). Drop --fsdp here")


def make_accelerator(cfg: TrainConfig, out: Path | None = None) -> Accelerator:
    t = cfg.training
    cpu = training_on_cpu(t)
    if t.device == "cuda" and not torch.cuda.is_available():
        raise UdiffError("training.device = 'cuda' but no CUDA device is available")
    # accelerate keeps one process-wide state; a second run in this process (a notebook, the
    # tests) may ask for other precision. Keep the process group (PartialState), reset the rest.
    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        tracking = t.log_with != "none" and out is not None
        accelerator = Accelerator(
            cpu=cpu, mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            # batch sizes are global: N processes x batch/N see what one process x batch sees
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            # every parameter takes part in each forward (udiff.testing checks backbones for it)
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
            fsdp_plugin=fsdp_plugin() if t.fsdp else None,
            log_with=t.log_with if tracking else None,
            project_config=ProjectConfiguration(project_dir=str(out),
                                                logging_dir=str(out / TENSORBOARD))
            if tracking else None)
    except (ValueError, RuntimeError) as e:
        raise UdiffError(f"cannot set up training ({t.mixed_precision=}): {e}") from None
    if t.fsdp and accelerator.distributed_type != DistributedType.FSDP:
        os.environ.pop("ACCELERATE_USE_FSDP", None)  # set by the plugin; later runs are not
        kind = accelerator.distributed_type
        raise fsdp_refusal("not distributed" if kind == DistributedType.NO else kind.value,
                           accelerator.num_processes)
    check_batches(t, accelerator.num_processes)
    return accelerator


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """FSDP2, fully sharded (parameters, gradients, optimizer state), one unit per block the
    backbone names in ``_no_split_modules`` (the diffusers / transformers convention)."""
    return FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True,
                                          auto_wrap_policy="transformer_based_wrap")


def prepare(accelerator: Accelerator, model: nn.Module, *rest):
    """``accelerator.prepare``; under FSDP its plugin is first told this model's units
    (``model._no_split_modules``) -- it would keep those of the first model it prepared."""
    if accelerator.distributed_type == DistributedType.FSDP:
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = list(model._no_split_modules)
    return accelerator.prepare(model, *rest)


def check_batches(t, processes: int) -> None:
    for name in ("batch_size", "autoencoder_batch_size"):
        if getattr(t, name) % processes:
            raise UdiffError(f"training.{name}={getattr(t, name)} must be a multiple of the "
                             f"{processes} processes (it is the global batch, split across them)")


def require_tracker(name: str) -> None:
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UdiffError("--log-with tensorboard needs the extra: pip install "
                             "'udiff-core[tensorboard]'") from None


def require_attention(backend: str) -> None:
    """Fail before anything is written if the chosen attention backend cannot work here."""
    if backend == "sdpa":
        return
    try:
        import xformers.ops  # noqa: F401
    except Exception as e:
        raise UdiffError(f"attention 'xformers' needs the extra: pip install 'udiff-core[xformers]'"
                         f" ({type(e).__name__}: {e})") from None


def set_attention(module: nn.Module, backend: str) -> None:
    """SDPA is diffusers'/timm's default; xformers is opt-in through the module's own switch."""
    if backend == "sdpa":
        return
    if isinstance(module, AttentionBackend):
        return module.set_attention_backend(backend)
    targets = [m for m in module.modules()
               if hasattr(m, "enable_xformers_memory_efficient_attention")]  # diffusers' switch
    if not targets:
        raise UdiffError(f"{type(module).__name__} has no xformers attention path")
    try:
        targets[0].enable_xformers_memory_efficient_attention()
    except Exception as e:
        raise UdiffError(f"xformers is installed but does not work here: {e}") from None
