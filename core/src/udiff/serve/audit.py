"""The audit log (``udiff serve --audit-log PATH``): one JSON line per request that reached a
run -- time, key name, run, labels, images, seed, status, ms -- appended and fsynced (a line is
on disk before the response leaves), rotated by size (``PATH.1`` ... ``PATH.N``). It never holds
a secret: only the key's name."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from ..errors import UdiffError


class AuditLog:
    def __init__(self, path: str | Path, max_bytes: int = 16 * 2**20, keep: int = 5) -> None:
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
        self._lock = threading.Lock()
        try:
            self._file = open(self.path, "ab")  # noqa: SIM115 -- held open for the server's life
        except OSError as e:
            raise UdiffError(f"--audit-log {path}: {e.strerror}") from None

    def write(self, *, key: str | None, run: str | None, labels, images: int | None,
              seed: int | None, status: int, ms: float) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        line = json.dumps({"time": now, "key": key, "run": run,
                           "labels": labels, "images": images, "seed": seed, "status": status,
                           "ms": round(ms, 1)}).encode() + b"\n"
        with self._lock:
            if self._file.tell() and self._file.tell() + len(line) > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.keep - 1, 0, -1):  # PATH.(N-1) -> PATH.N, ..., PATH -> PATH.1
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        with self._lock:
            self._file.close()
