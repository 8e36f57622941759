"""A run's components on disk: per role, ``config.json`` (component, plugin distribution and
version, udiff version, the validated config) beside safetensors weights. Nothing is unpickled.
File names: :mod:`udiff.run.layout`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors.torch
from pydantic import BaseModel
from torch import nn

from .. import plugins, pretrained
from ..errors import UdiffError
from ..plugins import Component
from ..version import __version__
from ..weights import lora
from .files import atomic_write, read_json, write_json
from .layout import ADAPTER, COMPONENT_CONFIG, WEIGHTS


def save_component(folder: Path, comp: Component, config: BaseModel, module: nn.Module | None,
                   **extra: Any) -> None:
    if module is not None:
        atomic_write(folder / WEIGHTS, lambda p: safetensors.torch.save_model(module, str(p)))
    write_json(folder / COMPONENT_CONFIG, {
        "role": comp.role, "component": comp.name, "plugin": comp.plugin,
        "plugin_version": comp.version, "udiff_version": __version__,
        "config": config.model_dump(mode="json"), **extra,
    })


def save_adapter(denoiser: nn.Module, folder: Path) -> int:
    """A LoRA run's denoiser weights: the adapter alone; returns its size in bytes."""
    state = lora.adapter_state(denoiser)
    atomic_write(folder / ADAPTER, lambda p: safetensors.torch.save_file(state, str(p)))
    return (folder / ADAPTER).stat().st_size


def component_of(folder: Path, role: str) -> tuple[Component, BaseModel, dict]:
    """The installed component a saved folder needs, and its validated config."""
    meta = read_json(folder / COMPONENT_CONFIG, f"{role} of run {folder.parent}")
    try:
        comp = plugins.get(role, meta.get("component"), plugin=meta.get("plugin", "?"))
    except UdiffError as e:
        raise UdiffError(f"run {folder.parent}: {e}") from None
    return comp, comp.make_config(options=meta.get("config", {})), meta


def load_component(folder: Path, role: str, context) -> tuple[nn.Module, dict]:
    comp, config, meta = component_of(folder, role)
    module = comp.build(config, context)
    if meta.get("lora"):  # the base again (checked to be the same), then the adapter
        lora.check_base(meta)
        base = meta["lora"]["base"]["path"]
        read = pretrained.denoiser_state(comp, base, config, context)
        pretrained.load_strict(module, read["state"], Path(base))
        module = lora.add(module, meta["lora"]["rank"], meta["lora"]["alpha"],
                          meta["lora"]["modules"])
        load_weights(module, folder / ADAPTER, only=lora.adapter_state(module))
        return module, meta
    load_weights(module, folder / WEIGHTS)
    return module, meta


def loader(folder: Path, role: str):
    """A maker for :func:`udiff.plugins.assembly.assemble`: ``context -> loaded module``."""
    return lambda context: load_component(folder, role, context)[0]


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
