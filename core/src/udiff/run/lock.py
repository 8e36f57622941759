"""One ``udiff train`` per run directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import UdiffError
from .layout import LOCK


class RunLock:
    """One ``udiff train`` per run directory: an exclusive flock on ``RUN/.lock``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UdiffError(f"--out {self.path.parent} is in use by another udiff train "
                             f"(pid {holder}); wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # leave nothing behind in the user's folder
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
