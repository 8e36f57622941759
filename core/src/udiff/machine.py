"""The machine a result was measured on, in the words every result file records."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """``"<CPU model>, <N> CPUs"`` (``/proc/cpuinfo``; elsewhere the platform's processor)."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"
    return f"{cpu}, {os.cpu_count()} CPUs"
