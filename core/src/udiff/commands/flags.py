"""Command-line flags generated from the pydantic run config: each flag names a config field, and
its type, choices, help and default are read from that field, never retyped. The same table turns
the flags a user gave back into config overrides (they win over ``--config``)."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ..config import TrainConfig


@dataclass(frozen=True)
class Flag:
    flag: str
    path: str  # dotted field of TrainConfig
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def training(*names: str) -> tuple[Flag, ...]:
    """``training.<name>`` as ``--<name with dashes>``."""
    return tuple(Flag("--" + n.replace("_", "-"), f"training.{n}") for n in names)


# The component flags `udiff train` and `udiff info` share.
COMPONENT_FLAGS = (
    Flag("--backbone", "denoiser.name", "NAME"),
    Flag("--preset", "denoiser.preset", "NAME"),
    Flag("--scheduler", "scheduler", "NAME"),
    Flag("--image-size", "data.image_size", "PIXELS"),
    Flag("--autoencoder-preset", "autoencoder.preset", "NAME"),
)
TRAIN_FLAGS = (
    Flag("--data", "data.source", "SOURCE"),
    *COMPONENT_FLAGS,
    Flag("--autoencoder", "autoencoder.from_run", "RUN_DIR"),
    Flag("--autoencoder-from", "autoencoder.pretrained", "PATH"),
    Flag("--init-from", "denoiser.init_from", "PATH"),
    Flag("--lora-rank", "denoiser.lora.rank", "R"),
    Flag("--lora-targets", "denoiser.lora.targets", "LIST"),
    *training("max_steps", "autoencoder_steps", "batch_size", "lr", "optimizer", "base_precision",
              "mixed_precision",
              "gradient_checkpointing", "compile", "attention", "device", "seed",
              "checkpoint_every", "keep_checkpoints", "grace_seconds", "max_nonfinite",
              "validate_every", "validate_per_label", "holdout", "early_stop",
              "early_stop_metric", "log_with", "fsdp"),
)

# `udiff distill`: the student's training (the rest of its config comes from the teacher).
DISTILL_FLAGS = (
    Flag("--lora-rank", "denoiser.lora.rank", "R"),
    Flag("--lora-targets", "denoiser.lora.targets", "LIST"),
    *training("max_steps", "batch_size", "lr", "optimizer", "base_precision", "mixed_precision",
              "compile", "attention",
              "device", "seed", "checkpoint_every", "keep_checkpoints", "grace_seconds",
              "max_nonfinite", "log_with"),
)


def field(path: str) -> FieldInfo:
    """The pydantic field at ``path`` (through optional sub-models)."""
    model: type[BaseModel] = TrainConfig
    info = None
    for name in path.split("."):
        info = model.model_fields[name]
        model = sub_model(info.annotation) or model
    return info


def options(annotation) -> list:
    """The members of ``X | Y | None`` (without None), or ``[annotation]``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def sub_model(annotation) -> type[BaseModel] | None:
    return next((a for a in options(annotation)
                 if isinstance(a, type) and issubclass(a, BaseModel)), None)


def scalar(annotation) -> tuple[type | None, list | None, str]:
    """(argparse type, choices, metavar) of a field; lists are given comma-separated."""
    kind = options(annotation)[0]
    if typing.get_origin(kind) is typing.Literal:
        return None, list(typing.get_args(kind)), ""
    if kind in (int, float):
        return kind, None, "N" if kind is int else "X"
    return None, None, "TEXT"


def help_text(info: FieldInfo, default: Any = PydanticUndefined) -> str:
    text = (info.description or "").rstrip(".")
    default = info.default if default is PydanticUndefined else default
    if default is not PydanticUndefined and default is not None and info.annotation is not bool:
        text += f" (default: {default})"
    return text.replace("%", "%%")


def lookup(values: dict | None, path: str) -> Any:
    for name in path.split("."):
        if not isinstance(values, dict) or name not in values:
            return PydanticUndefined
        values = values[name]
    return values


def add(parser: argparse.ArgumentParser, flags: tuple[Flag, ...],
        defaults: dict | None = None) -> None:
    """One argument per flag; ``defaults``: the command's own defaults over the model's (the
    ``defaults`` it passes to :func:`udiff.config.resolve`), shown in the help."""
    for f in flags:
        info = field(f.path)
        text = help_text(info, lookup(defaults, f.path))
        if info.annotation is bool:
            parser.add_argument(f.flag, action="store_true", default=None, help=text)
            continue
        kind, choices, metavar = scalar(info.annotation)
        parser.add_argument(f.flag, type=kind, choices=choices, default=None,
                            metavar=None if choices else f.metavar or metavar, help=text)


def overrides(args: argparse.Namespace, flags: tuple[Flag, ...]) -> dict[str, Any]:
    """Only the flags the user gave, as nested config values."""
    out: dict[str, Any] = {}
    given = {f.path: getattr(args, f.dest) for f in flags if getattr(args, f.dest, None) is not None}
    for path, value in given.items():
        if path == "denoiser.lora.targets":
            value = [t.strip() for t in value.split(",") if t.strip()]
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    if "name" in out.get("denoiser", {}) and getattr(args, "config", None):
        # Another backbone: its own preset (or none), not the file's.
        out["denoiser"].setdefault("preset", None)
    if "scheduler" in out:
        out["scheduler"] = {"name": out["scheduler"]}
    if "targets" in out.get("denoiser", {}).get("lora", {}) and "rank" not in out["denoiser"]["lora"]:
        out["denoiser"]["lora"].pop("targets")  # meaningful only with --lora-rank, as before
        if not out["denoiser"]["lora"]:
            out["denoiser"].pop("lora")
    return out


def subcommands(p: argparse.ArgumentParser, dest: str, names: str, help: str):
    """A command's required sub-commands (``names``: "a|b|c"), parsed with the command's parser
    class (its one-line errors)."""
    return p.add_subparsers(dest=dest, required=True, metavar=names, help=help,
                            parser_class=type(p))
