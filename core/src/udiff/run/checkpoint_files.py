"""Resumable training checkpoints: what a killed run needs to continue bit for bit.

``RUN/checkpoints/<stage>-<step>/`` holds the trained modules, the optimizer (tensors as
safetensors, the rest as JSON), the LR schedule, the EMA, every RNG state (python, numpy, torch,
CUDA) and the data position, with ``COMPLETE`` written last. A checkpoint is written into a
temporary folder beside it, every file fsynced, then renamed into place; retention deletes older
checkpoints only after the new one is complete. Nothing is unpickled.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ..errors import UdiffError
from ..weights.sharding import is_sharded, like, load_whole_state, whole, whole_state
from .layout import CHECKPOINT_STATE, CHECKPOINTS, MARKER

STAGES = ("autoencoder", "denoiser")  # in training order


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- RNG and optimizer state as tensors + JSON ---------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(state), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def optimizer_state(opt, keep: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Whole tensors (gathered when sharded: collective) + JSON; kept where ``keep``. Nested
    state (bitsandbytes keeps its 8-bit moments in a dict per parameter) is flattened to dotted
    keys: ``<pid>.<key>[.<key>...]``."""
    sd = opt.state_dict()
    tensors, scalars, seen = {}, {}, set()

    def flatten(prefix: str, state: dict) -> None:
        for key, value in state.items():
            if isinstance(value, dict):
                flatten(f"{prefix}.{key}", value)
            elif torch.is_tensor(value):
                value = whole(value, keep)
                if value is not None and value.untyped_storage().data_ptr() in seen:
                    value = value.clone()  # bitsandbytes' code tables are shared: safetensors
                if value is not None:  # stores each tensor once
                    seen.add(value.untyped_storage().data_ptr())
                tensors[f"{prefix}.{key}"] = value
            else:
                scalars[f"{prefix}.{key}"] = value

    for pid, state in sd["state"].items():
        flatten(str(pid), state)
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def set_optimizer_state(opt, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    params = [p for group in opt.param_groups for p in group["params"]]  # state's pid order
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, *path = flat.split(".")
        if torch.is_tensor(value) and value.ndim and len(path) == 1:  # moments: sharded like
            value = like(value, params[int(pid)])  # their parameter (torch's AdamW's only)
        node = state.setdefault(int(pid), {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


Files = dict[str, tuple[Any, dict | None]]


def snapshot(modules: dict[str, nn.Module], optimizer, ema=None, keep: bool = True) -> Files:
    """The trained state a checkpoint holds, file by file. Every process calls it (gathering
    sharded tensors is collective); only where ``keep`` does it hold anything."""
    files: Files = {key: (whole_state(m, keep) if is_sharded(m) else m, None)
                    for key, m in modules.items()}
    files["optimizer"] = optimizer_state(optimizer, keep)
    if ema is not None:
        files["ema"] = ({str(i): whole(t, keep) for i, t in enumerate(ema.shadow)}, None)
    return files


# -- one checkpoint -------------------------------------------------------------------------------
class CheckpointFiles:
    """Writes, finds and loads the checkpoints of one run directory."""

    def __init__(self, run_dir: Path, keep: int = 2) -> None:
        self.root = Path(run_dir) / CHECKPOINTS
        self.keep = keep

    def name(self, stage: str, step: int) -> str:
        return f"{STAGES.index(stage)}-{stage}-{step:09d}"

    def save(self, stage: str, step: int, files: Files, lr_scheduler, data: dict | None = None,
             extra: dict | None = None) -> Path:
        """Write a :func:`snapshot` (plus the LR schedule, RNG and data position) atomically."""
        final = self.root / self.name(stage, step)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            files = dict(files, rng=rng_state())
            data_tensors = {k: v for k, v in (data or {}).items() if torch.is_tensor(v)}
            files["data"] = (data_tensors, {k: v for k, v in (data or {}).items()
                                            if not torch.is_tensor(v)})
            for key, (tensors, meta) in files.items():
                if isinstance(tensors, nn.Module):  # save_model: tied weights stored once
                    safetensors.torch.save_model(tensors, str(tmp / f"{key}.safetensors"))
                elif tensors:
                    safetensors.torch.save_file(tensors, str(tmp / f"{key}.safetensors"))
                if meta is not None:
                    (tmp / f"{key}.json").write_text(json.dumps(meta))
            (tmp / CHECKPOINT_STATE).write_text(json.dumps({
                "stage": stage, "step": step, "lr_scheduler": lr_scheduler.state_dict(),
                **(extra or {})}))
            for f in tmp.iterdir():
                _fsync(f)
            (tmp / MARKER).write_text("ok\n")
            _fsync(tmp / MARKER)
            _fsync(tmp)
            if final.exists():  # a re-run of the same step: replace the old copy
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync(self.root)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            what = "no space left on device" if e.errno == errno.ENOSPC else str(e)
            prev = self.latest(warn=False)
            kept = f"; the previous checkpoint {prev} is intact" if prev else ""
            raise UdiffError(f"cannot write checkpoint {final.name}: {what}{kept}") from None
        self.prune()
        return final

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if not p.name.startswith(".") and (p / MARKER).is_file())

    def prune(self) -> None:
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in self.root.glob(".tmp-*"):  # left by a killed writer (not this process's)
            if not tmp.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(tmp, ignore_errors=True)

    def latest(self, warn: bool = True) -> Path | None:
        """The newest complete checkpoint; incomplete ones are skipped with a warning."""
        if warn and self.root.is_dir():
            for p in sorted(self.root.iterdir()):
                if not p.name.startswith(".") and not (p / MARKER).is_file():
                    print(f"udiff: warning: skipping incomplete checkpoint {p}", file=sys.stderr)
        done = self.complete()
        return done[-1] if done else None

    @staticmethod
    def state(path: Path) -> dict:
        return json.loads((path / CHECKPOINT_STATE).read_text())

    @staticmethod
    def load(path: Path, modules: dict[str, nn.Module], optimizer, lr_scheduler,
             ema=None) -> dict:
        """Restore everything saved in ``path``; returns state.json and the data position."""
        try:
            for key, module in modules.items():
                file = str(path / f"{key}.safetensors")
                frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
                if is_sharded(module):
                    load_whole_state(module, safetensors.torch.load_file(file))
                else:
                    safetensors.torch.load_model(module, file)
                for n, p in module.named_parameters():  # a quantized base's layers load new
                    if n in frozen:  # Parameters (optimum-quanto): frozen as before
                        p.requires_grad_(False)
            opt_t = safetensors.torch.load_file(str(path / "optimizer.safetensors")) if (
                path / "optimizer.safetensors").exists() else {}
            set_optimizer_state(optimizer, opt_t, json.loads((path / "optimizer.json").read_text()))
            state = json.loads((path / CHECKPOINT_STATE).read_text())
            lr_scheduler.load_state_dict(state["lr_scheduler"])
            if ema is not None:
                shadow = safetensors.torch.load_file(str(path / "ema.safetensors"))
                for i, t in enumerate(ema.shadow):
                    t.copy_(like(shadow[str(i)], t))
            data = json.loads((path / "data.json").read_text())
            if (path / "data.safetensors").exists():
                data.update(safetensors.torch.load_file(str(path / "data.safetensors")))
            rng = safetensors.torch.load_file(str(path / "rng.safetensors"))
            rng_meta = json.loads((path / "rng.json").read_text())
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise UdiffError(f"checkpoint {path} cannot be loaded: {str(e).splitlines()[0]}") from None
        return {"state": state, "data": data, "rng": (rng, rng_meta)}
