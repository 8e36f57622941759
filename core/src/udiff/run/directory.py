"""A run's components on disk: per role, ``config.json`` (component, plugin distribution and
version, udiff version, the validated config) beside safetensors weights. Nothing is unpickled.
File names: :mod:`udiff.run.layout`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
from pydantic import BaseModel
from torch import nn

from .. import plugins
from ..errors import UdiffError
from ..plugins import Component
from ..version import __version__
from ..weights import lora, pretrained, quantize
from .files import atomic_write, read_json, write_json
from .layout import ADAPTER, COMPONENT_CONFIG, CONFIG, RUN_FILE, WEIGHTS


def complete_run(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path, or one line if it is missing or training did not finish."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UdiffError(f"run directory {run_dir} does not exist")
    if not (run_dir / RUN_FILE).is_file():
        inside = sorted(p.parent for p in run_dir.glob(f"*/{RUN_FILE}"))  # e.g. a demo's folder
        if inside and not (run_dir / CONFIG).exists():
            raise UdiffError(f"{run_dir} is not a run directory but holds "
                             f"{'runs' if len(inside) > 1 else 'a run'}: "
                             f"{', '.join(str(p) for p in inside[:3])}")
        raise UdiffError(f"run directory {run_dir} is incomplete (no {RUN_FILE}: training did "
                         "not finish)")
    return run_dir


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


class Shared:
    """Modules that several loaded runs hold once (the server): a LoRA base with an adapter per
    run, and components whose weight files are byte-identical (e.g. one autoencoder under 31
    adapters). Keyed by SHA-256 and config; everything shared is frozen, so reuse is safe."""

    def __init__(self) -> None:
        self.modules: dict[tuple, nn.Module] = {}
        self.adapters = 0

    def get(self, key: tuple, make) -> nn.Module:
        if key not in self.modules:
            self.modules[key] = make()
        return self.modules[key]

    def adapter_name(self) -> str:
        self.adapters += 1
        return f"run{self.adapters}"  # peft adapter names become module keys: no dots


def is_component(folder: Path, role: str) -> bool:
    """Whether ``folder`` is a udiff run's ``role`` folder (a diffusers folder also holds a
    config.json, without udiff's keys)."""
    try:
        meta = json.loads((folder / COMPONENT_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("role") == role and "component" in meta


def base_state(comp: Component, base: Path, config, context) -> dict:
    """A LoRA base's weights: a udiff run's denoiser folder (a distilled LoRA student's teacher,
    built with the student's own config) or a format the plugin reads (``--init-from``)."""
    if is_component(base, "denoiser") and (base / WEIGHTS).is_file():
        return safetensors.torch.load_file(str(base / WEIGHTS))
    return pretrained.denoiser_state(comp, base, config, context)["state"]


def load_component(folder: Path, role: str, context, shared: Shared | None = None,
                   base_precision: str | None = None) -> tuple[nn.Module, dict]:
    """The saved component, built and loaded; with ``shared``, a module already loaded with the
    same weights is reused, and a LoRA run's adapter is added to its base under a new name
    (``meta["adapter"]``). A LoRA base is stored as the run trained it (``--base-precision``)
    unless ``base_precision`` says otherwise (export merges into the fp32 base); so is a frozen
    autoencoder (``meta["base_precision"]``)."""
    comp, config, meta = component_of(folder, role)
    key = (role, comp.name, json.dumps(config.model_dump(mode="json"), sort_keys=True))
    if meta.get("lora"):  # the base again (checked to be the same), then the adapter
        lora.check_base(meta)
        base = meta["lora"]["base"]["path"]
        precision = base_precision or meta["lora"].get("base_precision", "fp32")

        def make_base():
            module = comp.build(config, context)
            pretrained.load_strict(module, base_state(comp, Path(base), config, context),
                                   Path(base))
            return quantize.for_inference(module, precision)

        name = shared.adapter_name() if shared else lora.DEFAULT
        module = shared.get((*key, meta["lora"]["base"]["sha256"], precision), make_base) \
            if shared else make_base()
        module = lora.add(module, meta["lora"]["rank"], meta["lora"]["alpha"],
                          meta["lora"]["modules"], name=name)
        load_weights(module, folder / ADAPTER, only=lora.adapter_state(module, name), name=name)
        return module, {**meta, "adapter": name}

    # a frozen autoencoder stored at the run's --base-precision (its file holds fp32 weights)
    precision = base_precision or meta.get("base_precision", "fp32")

    def make(data: bytes | None = None):
        module = comp.build(config, context)
        load_weights(module, folder / WEIGHTS, data=data)
        return quantize.frozen_autoencoder(module, precision) if precision != "fp32" else module

    if shared is None or not (folder / WEIGHTS).is_file():
        return make(), meta
    data = (folder / WEIGHTS).read_bytes()  # read once: its SHA-256 is the key, then its weights
    return shared.get((*key, hashlib.sha256(data).hexdigest(), precision),
                      lambda: make(data)), meta


def loader(folder: Path, role: str, shared: Shared | None = None):
    """A maker for :func:`udiff.plugins.assembly.assemble`: ``context -> loaded module``."""
    return lambda context: load_component(folder, role, context, shared)[0]


def load_weights(module: nn.Module, path: Path, only: dict | None = None,
                 name: str = lora.DEFAULT, data: bytes | None = None) -> None:
    """All of ``module``'s weights from ``path`` (its bytes ``data`` if already read), or exactly
    the keys of ``only``; a LoRA adapter saved as ``default`` goes in as adapter ``name``."""
    if data is None and not path.is_file():
        raise UdiffError(f"run directory {path.parent.parent} is incomplete: missing {path}")
    try:
        state = safetensors.torch.load(path.read_bytes() if data is None else data)
        if name != lora.DEFAULT:
            state = {k.replace(f".{lora.DEFAULT}.", f".{name}."): v for k, v in state.items()}
        missing, unexpected = module.load_state_dict(state, strict=False)
    except Exception as e:  # truncated/tampered headers, shape mismatches
        raise UdiffError(f"cannot load weights {path}: {str(e).splitlines()[0]}") from None
    if missing:  # tied weights are saved once (safetensors' save_model): an alias is no gap
        own = module.state_dict()
        loaded = {own[k].data_ptr() for k in state if k in own}
        missing = [k for k in missing if own[k].data_ptr() not in loaded]
    if only is not None:
        missing = [k for k in missing if k.replace(f".{name}.", f".{lora.DEFAULT}.") in only]
    if missing or unexpected:
        raise UdiffError(f"weights {path} do not match the model: missing {list(missing)[:3]}, "
                         f"unexpected {list(unexpected)[:3]}")
