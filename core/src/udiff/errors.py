"""Errors a user can cause. The CLI prints them as one line and exits 2; nothing else is caught."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class UdiffError(Exception):
    """A problem with the user's input, configuration or installed plugins."""


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a known word is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
