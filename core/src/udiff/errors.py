"""Errors a user can cause. The CLI prints them as one line and exits 2; nothing else is caught."""

from __future__ import annotations

from pydantic import ValidationError


class UdiffError(Exception):
    """A problem with the user's input, configuration or installed plugins."""


def describe_validation(prefix: str, err: ValidationError) -> str:
    """One line naming the offending field(s) of a pydantic error, e.g. ``training.lr: ...``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
