"""The Train form, built from the run config: one field per ``udiff train`` flag the studio
offers (type, choices, bounds, default and help read from the pydantic field, as the CLI's
flags are), the values a form sends checked by the same ``TrainConfig`` (an error names its
field, as the server's do), and turned into the ordinary ``udiff train`` command line."""

from __future__ import annotations

import typing
from typing import Any

import annotated_types
from pydantic import ValidationError

from .. import plugins
from ..commands import flags
from ..config import TrainConfig, merge
from ..serve.schema import ApiError

# What the page offers. Left to the studio: --data (a folder under ROOT/data), --out (a name
# under ROOT/runs), --device (the studio's). Left out: paths to weights (--init-from and the
# autoencoder flags take files the studio would have to confine) and --log-with / --fsdp.
OFFERED = ("--backbone", "--preset", "--scheduler", "--image-size", "--autoencoder-preset",
           "--max-steps", "--autoencoder-steps", "--batch-size", "--lr", "--optimizer",
           "--mixed-precision", "--gradient-checkpointing", "--seed", "--checkpoint-every",
           "--keep-checkpoints", "--validate-every", "--validate-per-label", "--holdout",
           "--early-stop", "--early-stop-metric")
FLAGS = {f.path: f for f in flags.TRAIN_FLAGS if f.flag in OFFERED}


def kind(annotation) -> tuple[str, list | None]:
    """(input kind, choices) of a field: int, float, bool, choice or text."""
    first = flags.options(annotation)[0]
    if typing.get_origin(first) is typing.Literal:
        return "choice", list(typing.get_args(first))
    return {int: "int", float: "float", bool: "bool"}.get(first, "text"), None


def bounds(info) -> dict:
    out = {}
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge | annotated_types.Gt):
            out["min"] = m.ge if isinstance(m, annotated_types.Ge) else m.gt
        if isinstance(m, annotated_types.Le | annotated_types.Lt):
            out["max"] = m.le if isinstance(m, annotated_types.Le) else m.lt
    return out


def fields() -> list[dict]:
    """The form, in the flags' order; the backbone and preset choices are what is installed."""
    denoisers = plugins.registry().components["denoiser"]
    schedulers = plugins.registry().components["scheduler"]
    out = []
    for path, f in FLAGS.items():
        info = flags.field(path)
        what, choices = kind(info.annotation)
        default = info.default if info.default is not None and \
            not callable(getattr(info, "default_factory", None)) else None
        row = {"name": path, "flag": f.flag, "kind": what, "help": flags.help_text(info),
               "default": default if isinstance(default, int | float | str | bool) else None,
               **bounds(info)}
        if path == "denoiser.name":
            row |= {"kind": "choice", "choices": sorted(denoisers)}
        elif path == "denoiser.preset":
            row |= {"kind": "choice", "choices_by": "denoiser.name",
                    "choices": {n: sorted(c.presets) for n, c in denoisers.items()}}
        elif path == "scheduler":
            row |= {"kind": "choice", "choices": sorted(schedulers)}
        elif choices:
            row["choices"] = choices
        out.append(row)
    return out


def nested(values: dict[str, Any]) -> dict:
    """``{"training.max_steps": 5}`` -> ``{"training": {"max_steps": 5}}`` (the scheduler's
    name goes where the config file puts it)."""
    out: dict = {}
    for path, value in values.items():
        parts = ["scheduler", "name"] if path == "scheduler" else path.split(".")
        out = merge(out, _tree(parts, value))
    return out


def _tree(parts: list[str], value):
    return value if not parts else {parts[0]: _tree(parts[1:], value)}


def check(values: Any) -> dict[str, Any]:
    """The values a form sent: known fields, types and bounds as ``TrainConfig`` holds them.
    -> the values that were given (empty ones dropped: the run's plan chooses those)."""
    if not isinstance(values, dict):
        raise ApiError(422, "invalid_value", "values: an object of field -> value", "values")
    given = {k: v for k, v in values.items() if v not in (None, "")}
    for name in given:
        if name not in FLAGS:
            raise ApiError(422, "unknown_field", f"{name}: not a field of the form", name)
    offered = {f["name"]: f for f in fields()}
    # the installed components, as the form offers them (a backbone before its presets)
    for name in sorted(given, key=lambda n: "choices_by" in offered[n]):
        f, value = offered[name], given[name]
        choices = f.get("choices")
        if f.get("choices_by"):
            owner = given.get(f["choices_by"], offered[f["choices_by"]]["default"])
            choices = choices.get(owner, [])
        if choices is not None and value not in choices:
            raise ApiError(422, "invalid_value", f"{name}: {value!r} is not one of "
                           f"{', '.join(map(str, choices))}", name)
    try:
        TrainConfig(**nested(given))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
        name = next((n for n in given if where.startswith(n) or n.startswith(where)), where)
        raise ApiError(422, "invalid_value", f"{name}: {first['msg']}", name) from None
    return given


def argv(values: dict[str, Any]) -> list[str]:
    """The checked values as ``udiff train`` flags (booleans are switches)."""
    out = []
    for name, value in values.items():
        flag = FLAGS[name].flag
        if isinstance(value, bool):
            out += [flag] if value else []
        else:
            out += [flag, str(value)]
    return out
