"""Files written so that a crash never leaves half of one, and output folders guarded so that
nothing the user had is lost."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UdiffError
from .layout import CHECKPOINTS, CONFIG, LOCK, PAIRS, RUN_FILE


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` into a temp file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make run files private to the trainer
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UdiffError(f"{what}: missing {path}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UdiffError(f"{what}: {path} is not valid JSON ({e})") from None


def prepare_out(out: Path, overwrite: bool, clear: bool = True) -> None:
    """Refuse an --out holding anything unless --overwrite; never delete the user's files.
    ``clear=False`` only checks (every process checks; the main one clears)."""
    if out.exists() and not out.is_dir():
        raise UdiffError(f"--out {out} exists and is not a directory")
    held = out.is_dir() and any(p.name != LOCK for p in out.iterdir())
    if held and not overwrite:
        what = "a run" if (out / CONFIG).exists() else "files"
        raise UdiffError(f"--out {out} already holds {what}; choose a new --out or pass "
                         "--overwrite")
    if not clear:  # nothing created: a later error leaves no trace
        return
    if held:
        (out / RUN_FILE).unlink(missing_ok=True)  # the old run is no longer complete
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # nor are its checkpoints
        (out / PAIRS).unlink(missing_ok=True)  # the old student's teacher samples
    out.mkdir(parents=True, exist_ok=True)
