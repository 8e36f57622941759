"""Run directories on disk: safetensors weights beside JSON configs, written atomically.

A component folder holds ``config.json`` (component, plugin distribution and version, udiff
version, the validated config) and ``model.safetensors``. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
from pydantic import BaseModel
from torch import nn

from . import plugins
from .errors import UdiffError
from .plugins import Component

RUN_FILE = "run.json"  # written last: its presence marks a complete run


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` into a temp file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make run files private to the trainer
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UdiffError(f"{what}: missing {path}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UdiffError(f"{what}: {path} is not valid JSON ({e})") from None


def save_component(folder: Path, comp: Component, config: BaseModel, module: nn.Module | None,
                   **extra: Any) -> None:
    import udiff

    if module is not None:
        atomic_write(folder / "model.safetensors",
                     lambda p: safetensors.torch.save_model(module, str(p)))
    write_json(folder / "config.json", {
        "role": comp.role, "component": comp.name, "plugin": comp.plugin,
        "plugin_version": comp.version, "udiff_version": udiff.__version__,
        "config": config.model_dump(mode="json"), **extra,
    })


def component_of(folder: Path, role: str) -> tuple[Component, BaseModel, dict]:
    """The installed component a saved folder needs, and its validated config."""
    meta = read_json(folder / "config.json", f"{role} of run {folder.parent}")
    name = meta.get("component")
    try:
        comp = plugins.get(role, name)
    except UdiffError:
        plugin = meta.get("plugin", "?")
        raise UdiffError(f"run {folder.parent} needs {role} {name!r} from plugin {plugin}, which "
                         f"is not installed: pip install {plugin}") from None
    return comp, comp.make_config(options=meta.get("config", {})), meta


def load_component(folder: Path, role: str, context) -> tuple[nn.Module, dict]:
    comp, config, meta = component_of(folder, role)
    module = comp.build(config, context)
    if meta.get("lora"):  # the base again (checked to be the same), then the adapter
        from . import lora, pretrained

        lora.check_base(meta)
        base = meta["lora"]["base"]["path"]
        read = pretrained.denoiser_state(comp, base, config, context)
        pretrained.load_strict(module, read["state"], Path(base))
        module = lora.add(module, meta["lora"]["rank"], meta["lora"]["alpha"],
                          meta["lora"]["modules"])
        load_weights(module, folder / lora.ADAPTER_FILE, only=lora.adapter_state(module))
        return module, meta
    load_weights(module, folder / "model.safetensors")
    return module, meta


def load_weights(module: nn.Module, path: Path, only: dict | None = None) -> None:
    """All of ``module``'s weights from ``path`` (or exactly the keys of ``only``)."""
    if not path.is_file():
        raise UdiffError(f"run directory {path.parent.parent} is incomplete: missing {path}")
    try:
        missing, unexpected = safetensors.torch.load_model(module, str(path), strict=False)
    except Exception as e:  # truncated/tampered headers, shape mismatches
        raise UdiffError(f"cannot load weights {path}: {str(e).splitlines()[0]}") from None
    if only is not None:
        missing = [k for k in missing if k in only]
    if missing or unexpected:
        raise UdiffError(f"weights {path} do not match the model: missing {list(missing)[:3]}, "
                         f"unexpected {list(unexpected)[:3]}")
