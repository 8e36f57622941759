"""API keys with scopes (``udiff serve --keys-file keys.toml``): who may use which runs and, per
run, which labels, with optional quotas. The file holds each secret's SHA-256, never the secret
(``udiff keys add`` prints a new secret once). Nothing here imports torch or FastAPI.

keys.toml::

    [[keys]]
    name = "u07"
    sha256 = "9f86d0..."           # of the secret the client sends as 'Authorization: Bearer ...'
    runs = { "u07" = [7] }         # run name or glob -> its labels (indices or names), or "*"
    requests_per_minute = 60       # optional
    images_per_day = 500           # optional (a UTC day)
    admin = true                   # optional: may use udiff studio (train, compare, export)
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UdiffError

PREFIX = "udiff_"  # every secret udiff makes starts so: a file that holds one is refused
SECRET = re.compile(rf"^{PREFIX}[A-Za-z0-9_-]{{20,}}$")
HEX = re.compile(r"^[0-9a-f]{64}$")
KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the audit log's "key": no secret, no spaces
HEADER = "# udiff serve --keys-file: each key's SHA-256, never its secret\n"
FIELDS = {"name", "sha256", "runs", "requests_per_minute", "images_per_day", "admin"}
ALL = "*"  # every label of a run


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Key:
    name: str
    sha256: str
    patterns: dict[str, tuple | str]  # as the file says them: run glob -> labels or "*"
    scope: dict[str, frozenset[int] | None] = field(default_factory=dict)  # served run -> labels
    requests_per_minute: int | None = None
    images_per_day: int | None = None
    admin: bool = False  # udiff studio: train, compare, export

    @property
    def every_scope(self) -> bool:
        return self.patterns == {ALL: ALL}

    def runs(self) -> list[str]:
        return sorted(self.scope)

    def describe_scope(self, run: str) -> str:
        labels = self.scope.get(run)
        return "every label" if labels is None else ", ".join(str(x) for x in sorted(labels))


class Keys:
    """The keys of one file, resolved against the served runs; looked up by the secret's hash."""

    def __init__(self, keys: list[Key], source: str) -> None:
        self.keys, self.source = keys, source
        self._by_hash = {k.sha256: k for k in keys}

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, secret: str) -> Key | None:
        return self._by_hash.get(digest(secret))


def every_scope(name: str, secret: str, runs: dict[str, list[str]]) -> Key:
    """``--token-file``: one key that may use every run and label."""
    return Key(name, digest(secret), {ALL: ALL}, {r: None for r in runs})


def load(path: str | Path, runs: dict[str, list[str]], extra: list[Key] = (),
         strict: bool = True) -> Keys:
    """``path`` parsed and checked against ``runs`` (served run name -> its label names); any
    fault is one :class:`UdiffError` line naming the key and field. ``strict=False`` (the
    studio, whose runs are served as they finish): a pattern may match no run yet."""
    where = f"--keys-file {path}"
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise UdiffError(f"{where}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UdiffError(f"{where} does not parse: {e}") from None
    unknown = sorted(set(data) - {"keys"})
    if unknown:
        raise UdiffError(f"{where}: unknown table {unknown[0]!r} (one [[keys]] table per key)")
    entries = data.get("keys", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UdiffError(f"{where}: 'keys' must be [[keys]] tables")
    keys, names = list(extra), {k.name for k in extra}
    for i, entry in enumerate(entries):
        key = parse(entry, f"{where}: key {entry.get('name', f'#{i + 1}')!r}", runs, strict)
        if key.name in names:
            raise UdiffError(f"{where}: duplicate key name {key.name!r}")
        if any(k.sha256 == key.sha256 for k in keys):
            raise UdiffError(f"{where}: key {key.name!r} has the same sha256 as another key")
        names.add(key.name)
        keys.append(key)
    return Keys(keys, str(path))


def parse(entry: dict, where: str, runs: dict[str, list[str]], strict: bool = True) -> Key:
    for name, value in entry.items():  # before anything else: never echo a secret back
        if isinstance(value, str) and SECRET.match(value) or name in ("secret", "token"):
            raise UdiffError(f"{where}: field {name!r} holds a secret in clear; the file keeps "
                             "only its sha256 (udiff keys add prints the secret once)")
    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise UdiffError(f"{where}: unknown field {unknown[0]!r} (fields: "
                         f"{', '.join(sorted(FIELDS))})")
    name = entry.get("name")
    if not isinstance(name, str) or not KEY_NAME.fullmatch(name):
        raise UdiffError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-'")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not HEX.match(sha):
        raise UdiffError(f"{where}: sha256 must be 64 lowercase hex digits (the SHA-256 of the "
                         "secret)")
    patterns = entry.get("runs")
    if not isinstance(patterns, dict) or not patterns:
        raise UdiffError(f"{where}: runs must be a table of run name or glob -> labels, e.g. "
                         "runs = { \"u07\" = [7] }")
    quotas = {}
    for q in ("requests_per_minute", "images_per_day"):
        value = entry.get(q)
        if value is not None and (type(value) is not int or value < 1):
            raise UdiffError(f"{where}: {q} must be a whole number >= 1")
        quotas[q] = value
    admin = entry.get("admin", False)
    if type(admin) is not bool:
        raise UdiffError(f"{where}: admin must be true or false")
    scope, written = resolve(patterns, where, runs, strict)
    return Key(name, sha, written, scope, **quotas, admin=admin)


def resolve(patterns: dict, where: str, runs: dict[str, list[str]], strict: bool = True) \
        -> tuple[dict[str, frozenset[int] | None], dict[str, tuple | str]]:
    """Each pattern's served runs and their label indices; a pattern matching no run, or a
    label one of its runs lacks, is an error (a typo must not silently grant nothing)."""
    scope: dict[str, frozenset[int] | None] = {}
    written: dict[str, tuple | str] = {}
    for pattern, labels in patterns.items():
        matched = [r for r in runs if fnmatch.fnmatchcase(r, pattern)]
        if not matched and strict:
            raise UdiffError(f"{where}: run {pattern!r} matches no served run (served: "
                             f"{', '.join(runs) or 'none'})")
        if labels == ALL:
            written[pattern] = ALL
            for run in matched:
                scope[run] = None
            continue
        if not isinstance(labels, list) or not labels or not all(
                isinstance(x, str) and x or type(x) is int for x in labels):
            raise UdiffError(f"{where}: runs.{pattern} must be \"*\" or a list of label indices "
                             "or names")
        written[pattern] = tuple(labels)
        for run in matched:
            names, indices = runs[run], set()
            for x in labels:
                if type(x) is int and 0 <= x < len(names):
                    indices.add(x)
                elif isinstance(x, str) and x in names:
                    indices.add(names.index(x))
                else:
                    raise UdiffError(f"{where}: label {x!r} is not a label of run {run!r} "
                                     f"(indices 0..{len(names) - 1} or names)")
            if run in scope and scope[run] is None:
                continue  # another pattern already grants every label
            scope[run] = frozenset(indices | (scope.get(run) or set()))
    return scope, written


def entry_toml(name: str, sha256: str, runs: dict[str, list | tuple | str],
               requests_per_minute: int | None = None, images_per_day: int | None = None,
               admin: bool = False) -> str:
    """One ``[[keys]]`` table: ``runs`` maps a run name or glob to its labels or ``"*"``."""
    def labels(v) -> str:
        return '"*"' if v == ALL else "[" + ", ".join(
            str(x) if isinstance(x, int) else toml_string(x) for x in v) + "]"

    lines = ["[[keys]]", f"name = {toml_string(name)}", f"sha256 = \"{sha256}\"",
             "runs = { " + ", ".join(f"{toml_string(r)} = {labels(v)}" for r, v in runs.items())
             + " }"]
    if requests_per_minute:
        lines.append(f"requests_per_minute = {requests_per_minute}")
    if images_per_day:
        lines.append(f"images_per_day = {images_per_day}")
    if admin:
        lines.append("admin = true")
    return "\n".join(lines) + "\n"


def toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
