"""Weights the user already has on disk: a pretrained autoencoder (``--autoencoder-from``) and a
pretrained denoiser (``--init-from``), read without downloading and without unpickling code.

Autoencoders are read from a diffusers folder (``config.json`` + weights, e.g. a Stable Diffusion
repo's ``vae/``) or a single ``.safetensors`` file with ``config.json`` beside it; the registered
autoencoder whose ``diffusers_class`` meta matches the config's ``_class_name`` maps it into its
own config. Denoisers declare the formats they read as ``init_formats`` meta: ``{format name:
reader(path, config, context) -> {"options": ..., "state": ..., "label_table": optional}}`` —
the config options that rebuild the architecture, the module's state dict, and a pretrained
class-embedding table ``[labels + 1, D]`` (null last) if the format has one. ``config`` is what
the user's preset/options give (a hint for what weights cannot tell, e.g. DiT's head count). A
reader raises :class:`NotThisFormat` for a path that is not its format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .. import plugins
from ..errors import UdiffError
from ..plugins.contract import resolve

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                "diffusion_pytorch_model.bin")


class NotThisFormat(UdiffError):
    """A reader's answer for a path in another format (the host tries the next one)."""


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a plain-tensor pickle; anything needing more is refused."""
    path = Path(path)
    if not path.is_file():
        raise UdiffError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return safetensors.torch.load_file(str(path))
        except Exception as e:
            raise UdiffError(f"cannot read {path} as safetensors: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError names the global it refused
        raise UdiffError(f"refused {path}: it needs more than torch.load(weights_only=True) "
                         f"({str(e).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training checkpoints keep the weights under "model"
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UdiffError(f"{path} does not hold a state dict of tensors")
    return state


def diffusers_files(path: Path, classes: tuple[str, ...]) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a diffusers model folder, or of ``X.safetensors`` with a
    ``config.json`` beside it, whose ``_class_name`` is one of ``classes``."""
    path = Path(path)
    if not path.exists():
        raise UdiffError(f"{path} does not exist")
    folder = path if path.is_dir() else path.parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise NotThisFormat(f"{path}: no config.json (a diffusers model folder has one)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise UdiffError(f"{config_file} is not valid JSON: {e}") from None
    if config.get("_class_name") not in classes:
        raise NotThisFormat(f"{path} holds a {config.get('_class_name', 'model without _class_name')}, "
                            f"not a {' or '.join(classes)}")
    if path.is_file():
        return config, read_weights(path)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return config, read_weights(folder / name)
    raise UdiffError(f"{folder} has a config.json but no weights ({', '.join(WEIGHT_FILES)})")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Load every tensor or name the first few that do not fit."""
    own = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        parts = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("shape mismatch", wrong), ("missing", missing),
                                      ("unexpected", unexpected)) if items]
        raise UdiffError(f"{source} does not fit the model ({'; '.join(parts)})")
    module.load_state_dict(state)


def autoencoder(path: str | Path, context) -> tuple[plugins.Component, object, nn.Module, float]:
    """The pretrained autoencoder: its component, config, module (frozen) and scaling factor."""
    comps = [c for c in plugins.registry().components["autoencoder"].values()
             if c.meta.diffusers_class and c.meta.from_diffusers_config]
    classes = tuple(c.meta.diffusers_class for c in comps)
    try:
        config, state = diffusers_files(Path(path), classes)
    except NotThisFormat as e:
        raise UdiffError(f"--autoencoder-from {e}") from None
    comp = next(c for c in comps if c.meta.diffusers_class == config["_class_name"])
    channels = config.get("in_channels", 3)
    if channels != context.image_channels:
        raise UdiffError(f"--autoencoder-from {path} takes {channels}-channel images, the data has "
                         f"{context.image_channels} (set data.channels = {channels})")
    try:
        options = resolve(comp.meta.from_diffusers_config)(config)
    except ValueError as e:
        raise UdiffError(f"--autoencoder-from {path}: {e}") from None
    cfg = comp.make_config(options=options)
    module = comp.build(cfg, context)
    load_strict(module.diffusers_model(), state, Path(path))
    return comp, cfg, module.eval().requires_grad_(False), float(config.get("scaling_factor", 1.0))


def denoiser_state(comp: plugins.Component, path: str | Path, config, context) -> dict:
    """What the first declared format that reads ``path`` returns (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise UdiffError(f"--init-from {path} does not exist")
    formats = comp.meta.init_formats
    if not formats:
        raise UdiffError(f"denoiser {comp.name!r} ({comp.plugin}) declares no --init-from formats")
    reasons = []
    for name, reader in formats.items():
        try:
            return resolve(reader)(path, config, context)
        except NotThisFormat as e:
            reasons.append(f"{name}: {e}")
    raise UdiffError(f"--init-from {path} is not a format {comp.plugin} reads ({'; '.join(reasons)})")
