"""LoRA fine-tuning through peft: low-rank adapters on a frozen pretrained denoiser.

A LoRA run saves the adapter alone (``denoiser/adapter.safetensors``, a few MB, written by
:func:`udiff.run.directory.save_adapter`) and records its
base — the ``--init-from`` path and the SHA-256 of its weights — in ``denoiser/config.json``;
loading the run reads the base again, checks it is the same, and applies the adapter.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UdiffError


def targets(comp, names: list[str]) -> list[str]:
    """Module-name suffixes to adapt: the backbone's ``lora_targets`` groups ("attention",
    "mlp") expanded, other names taken as given."""
    groups = comp.meta.lora_targets
    out = []
    for name in names:
        if name in groups:
            out += groups[name]
        elif name in ("attention", "mlp"):
            raise UdiffError(f"denoiser {comp.name!r} declares no {name!r} LoRA targets; name the "
                             "modules (e.g. --lora-targets to_q,to_v)")
        else:
            out.append(name)
    return out


def require() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise UdiffError("LoRA needs the extra: pip install 'udiff-core[lora]'") from None


DEFAULT = "default"  # peft's adapter name: the one a run saves and a lone run loads


def add(denoiser: nn.Module, rank: int, alpha: float | None, modules: list[str],
        name: str = DEFAULT) -> nn.Module:
    """Inject adapters in place; only they stay trainable (zero-initialised B: the model starts
    exactly as the base). Another ``name`` adds a second adapter beside the first (the server
    keeps one base with an adapter per run; :func:`activate` picks one)."""
    require()
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=modules, lora_dropout=0.0)
    try:
        with warnings.catch_warnings():  # "multiple adapters": the server's shared base, on purpose
            warnings.simplefilter("ignore", UserWarning)
            denoiser = inject_adapter_in_model(config, denoiser, adapter_name=name)
    except ValueError as e:  # "Target modules ... not found in the base model"
        raise UdiffError(f"--lora-targets {','.join(modules)}: {str(e).splitlines()[0]}") from None
    for name, p in denoiser.named_parameters():
        p.requires_grad_("lora_" in name)
    return denoiser


def check_targets(denoiser: nn.Module, modules: list[str]) -> None:
    """One line, before any work, for a target no module name ends with (peft matches module
    names by suffix and would only fail when the adapters are injected)."""
    names = [name for name, _ in denoiser.named_modules()]
    missing = [t for t in modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise UdiffError(f"--lora-targets {','.join(modules)}: no module of the denoiser is "
                         f"named {', '.join(missing)}")


def adapter_state(denoiser: nn.Module, name: str = DEFAULT) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors, keyed as a run saves them (under the default name)."""
    return {k.replace(f".{name}.", f".{DEFAULT}."): v.detach().contiguous()
            for k, v in denoiser.state_dict().items() if "lora_" in k and f".{name}." in k}


def activate(denoiser: nn.Module, name: str) -> None:
    """Make adapter ``name`` the one every adapted layer applies."""
    from peft.tuners.lora import LoraLayer

    for module in denoiser.modules():
        if isinstance(module, LoraLayer) and module.active_adapters != [name]:
            module.set_adapter(name)


def base_state(denoiser: nn.Module) -> dict[str, torch.Tensor]:
    """The denoiser's own (non-LoRA) state dict, named as without adapters."""
    return {k.replace(".base_layer.", "."): v for k, v in denoiser.state_dict().items()
            if "lora_" not in k}


def merged_state(denoiser: nn.Module) -> dict[str, torch.Tensor]:
    """Base weights with every adapter folded in (W + scale * B @ A), named as without adapters."""
    from peft.tuners.lora import LoraLayer

    for module in denoiser.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    state = {k: v.clone() for k, v in base_state(denoiser).items()}  # before unmerge rewrites them
    for module in denoiser.modules():
        if isinstance(module, LoraLayer):
            module.unmerge()
    return state


def unload(denoiser: nn.Module) -> nn.Module:
    """Every adapter folded into its base layer and the adapters removed: a plain module again
    (a LoRA teacher's full student starts from it)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(denoiser.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, attr = name.rpartition(".")
            setattr(denoiser.get_submodule(parent), attr, module.get_base_layer())
    return denoiser


def fingerprint(path: str | Path) -> str:
    """SHA-256 of the base's weight file(s): a LoRA adapter only means something on its base."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def check_base(meta: dict) -> None:
    base = meta["lora"]["base"]
    if not Path(base["path"]).exists():
        raise UdiffError(f"this run's LoRA adapter needs its base {base['path']}, which does not "
                         "exist")
    if fingerprint(base["path"]) != base["sha256"]:
        raise UdiffError(f"the base {base['path']} changed since this run's LoRA adapter was "
                         "trained (SHA-256 differs)")
