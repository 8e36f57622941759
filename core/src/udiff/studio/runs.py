"""What the Watch panel shows of a run, read from its folder (the studio keeps no state of its
own): its state, steps, the log's rows, the validation grids, the time left (from the progress
bar the child prints) and, when it failed, its one error line."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from ..run.layout import CHECKPOINTS, CONFIG, LOG, MARKER, RUN_FILE, VALIDATION
from .jobs import Job

# tqdm's line: "stage 2: denoiser ...:  40%|####      | 40/100 [00:10<00:15,  3.9it/s]"
BAR = re.compile(r"(stage \d: \w+)[^|\r\n]*?(\d+)%\|[^|]*\|\s*(\d+)/(\d+) \[([\d:]+)<([\d:?]+)")
# bytes of a child's output searched for its progress bar when its end holds none (validation
# prints bars of its own: the last stage bar can be tens of KB back)
TAIL = 256 * 1024


def seconds(clock: str) -> float | None:
    """tqdm's ``[HH:]MM:SS`` -> seconds (``?`` before it knows)."""
    if "?" in clock:
        return None
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


NEAR = 16 * 1024  # where the newest bar nearly always is: read first (a poll stays cheap)


def tail(path: Path, size: int = TAIL) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace")


def progress(output: str) -> dict | None:
    """The last progress bar the child printed: its stage, step, total and time left."""
    found = list(BAR.finditer(output))
    if not found:
        return None
    m = found[-1]
    return {"stage": m.group(1), "step": int(m.group(3)), "total": int(m.group(4)),
            "elapsed_s": seconds(m.group(5)), "left_s": seconds(m.group(6))}


def last_lines(output: Path, count: int) -> list[str]:
    """The child's last ``count`` non-empty lines (a progress bar's redraws are lines too)."""
    return [x.strip() for x in re.split(r"[\r\n]", tail(output, NEAR)) if x.strip()][-count:]


def log_rows(run: Path, since: int = 0) -> list[dict]:
    """``log.jsonl``'s rows from row ``since`` (a row being written is left for the next read)."""
    path = run / LOG
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines()[since:]:
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def grids(run: Path) -> list[str]:
    """The validation grids written so far, oldest first (``validation/step-N.png``)."""
    folder = run / VALIDATION
    found = [p for p in folder.glob("step-*.png")] if folder.is_dir() else []
    return [f"{VALIDATION}/{p.name}" for p in sorted(found, key=lambda p: int(
        re.sub(r"\D", "", p.stem) or 0))]


def steps(run: Path) -> dict:
    try:
        t = tomllib.loads((run / CONFIG).read_text()).get("training", {})
    except (OSError, ValueError):
        return {}
    return {"autoencoder": t.get("autoencoder_steps"), "denoiser": t.get("max_steps")}


def state(run: Path, job: Job | None) -> str:
    if job is not None and job.status in ("queued", "running", "stopping"):
        return job.status
    if (run / RUN_FILE).is_file():
        return "finished"
    if any((run / CHECKPOINTS).glob(f"*/{MARKER}")):
        return "stopped"  # resumable
    if job is not None and job.cancelled:
        return "cancelled"  # before its first checkpoint (SIGTERM during start-up kills it)
    if job is not None and job.returncode not in (None, 0):
        return "failed"
    return "empty" if not run.exists() else "incomplete"


def rows(run: Path) -> int:
    """How many rows the log holds (counted, not parsed: every poll asks)."""
    path = run / LOG
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def describe(run: Path, job: Job | None, output: Path, position: int | None) -> dict:
    s = state(run, job)
    bar = None
    if s in ("running", "stopping"):
        bar = progress(tail(output, NEAR)) or progress(tail(output))
    return {"name": run.name, "state": s, "queue_position": position,
            "steps": steps(run), "progress": bar, "grids": grids(run), "rows": rows(run),
            "error": (last_lines(output, 1) or [None])[0] if s == "failed" else None,
            "returncode": job.returncode if job else None,
            "resumable": s == "stopped"}
