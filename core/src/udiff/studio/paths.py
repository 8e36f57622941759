"""Every path a studio request names, confined to ``--root``: data folders under ``ROOT/data``,
runs under ``ROOT/runs``, comparisons under ``ROOT/compare``, exports under
``ROOT/exports``, the studio's own files (child
output, job records) under ``ROOT/.studio``. A name is one plain path segment; anything that
resolves outside its folder -- ``..``, an absolute path, a symlink out -- is refused with the
field named, before any file is touched."""

from __future__ import annotations

import re
from pathlib import Path

from ..serve.schema import ApiError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a run's or data folder's name
FOLDERS = ("data", "runs", "compare", "exports", ".studio")


class Root:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.data, self.runs = self.root / "data", self.root / "runs"
        self.compare, self.exports = self.root / "compare", self.root / "exports"
        self.state = self.root / ".studio"

    def make(self) -> None:
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def named(self, folder: Path, name: str, field: str) -> Path:
        """``folder/name`` for a plain name that stays inside ``folder`` once resolved."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ApiError(400, "bad_name", f"{field}: {name!r} is not a plain name (letters, "
                           "digits, '.', '_', '-'; no '/' or '..')", field)
        path = folder / name
        self.confined(path, folder, field)
        return path

    def file(self, folder: Path, relative: str, field: str) -> Path:
        """A file below ``folder`` (a run's validation grid, say): relative, no ``..``, and
        inside ``folder`` after symlinks are followed."""
        if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise outside(field, relative)
        path = folder / relative
        self.confined(path, folder, field)
        return path

    def confined(self, path: Path, folder: Path, field: str) -> None:
        if not path.resolve().is_relative_to(folder.resolve()):  # symlinks followed
            raise outside(field, path.name)


def outside(field: str, what: str) -> ApiError:
    return ApiError(403, "outside_root", f"{field}: {what!r} leads outside the studio root",
                    field)
