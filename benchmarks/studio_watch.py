"""Does watching cost training anything? (issue 33). One run started through a real
``udiff studio``; its stage-2 steps/s measured in alternating windows: the page open in headless
chromium and polling (every 2 s; Watch panel on the run), then no page at all. The ratio is
the median of the watched windows' steps/s over the median of the unwatched ones'; the target is
within 3%. Run it alone on the machine: anything else running changes both sides.

    python benchmarks/studio_watch.py --out benchmarks/results/studio-DATE [--pairs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

BAR = re.compile(r"stage 2: \w+:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def write_folder(root: Path, labels: int = 3, per_label: int = 24, size: int = 16) -> None:
    """Labels that differ in colour (the tests' folder)."""
    rng = np.random.default_rng(0)
    for k in range(labels):
        (root / f"user{k}").mkdir(parents=True)
        for i in range(per_label):
            arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            arr[..., k % 3] += 180
            Image.fromarray(arr).save(root / f"user{k}" / f"{i}.png")


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type":
                                                                  "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def step(output: Path) -> int:
    """The newest stage-2 step the child's progress bar printed."""
    found = BAR.findall(output.read_text(errors="replace")[-20000:]) if output.exists() else []
    return int(found[-1][0]) if found else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/udiff-studio-watch"))
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--window", type=float, default=15.0, help="seconds per window")
    ap.add_argument("--preset", default="small")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    shutil.rmtree(args.work, ignore_errors=True)
    write_folder(args.work / "data" / "users")
    studio = subprocess.Popen([sys.executable, "-m", "udiff", "studio", "--root",
                               str(args.work), "--port", "0"], stderr=subprocess.PIPE, text=True)
    url = None
    for line in studio.stderr:
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if m:
            url = m.group(1)
            break
    output = args.work / ".studio" / "output" / "train-watched.txt"
    steps = 100000  # longer than the measurement: the run is stopped after it
    job = post(url + "/studio/runs", {"name": "watched", "data": "users", "values": {
        "denoiser.preset": args.preset, "data.image_size": 16, "training.max_steps": steps,
        "training.autoencoder_steps": 20, "training.batch_size": 16,
        "training.validate_every": 0, "training.checkpoint_every": steps}})
    while step(output) < 50:  # past stage 1, the latent cache and the first steps
        time.sleep(0.5)
    rates = {"watched": [], "unwatched": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        for i in range(args.pairs):
            for side in ("watched", "unwatched"):
                page = None
                if side == "watched":  # the Watch panel on the run, polling
                    page = browser.new_page()
                    page.goto(url + "/")
                    page.click("#tabs [data-tab=watch]")
                    page.wait_for_selector("#runs tr[data-run=watched] button")
                    page.click("#runs tr[data-run=watched] button")
                    page.wait_for_selector("#watch-state[data-state=running]")
                time.sleep(1.0)  # the page's first load is not a watcher's steady state
                a, t0 = step(output), time.monotonic()
                time.sleep(args.window)
                b, t1 = step(output), time.monotonic()
                rates[side].append((b - a) / (t1 - t0))
                if page is not None:
                    page.close()
                print(f"pair {i + 1} {side}: {rates[side][-1]:.2f} steps/s", flush=True)
            write(args, rates)  # after each pair: a cut run keeps what it measured
        browser.close()
    os.killpg(job["pid"], signal.SIGKILL)  # the run, never meant to finish
    studio.send_signal(signal.SIGTERM)
    studio.wait(60)
    print(json.dumps(write(args, rates)))


def write(args, rates: dict) -> dict:
    ratio = statistics.median(rates["watched"]) / statistics.median(rates["unwatched"])
    model = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text()
                  .splitlines() if x.startswith("model name")), "?")
    flags = set(next(x for x in Path("/proc/cpuinfo").read_text().splitlines()
                     if x.startswith("flags")).split())
    result = {"what": __doc__.split("\n\n")[0], "preset": args.preset,
              "window_s": args.window, "pairs": len(rates["unwatched"]), "steps_per_s": rates,
              "watched_over_unwatched": round(ratio, 4), "target": "within 3% (0.97-1.03)",
              "met": 0.97 <= ratio <= 1.03,
              "machine": {"cpu": model, "cores": len(os.sched_getaffinity(0)),
                          "flags": [f for f in ("avx2", "avx512f", "fma", "avx512_bf16",
                                                "amx_bf16") if f in flags]}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "studio-watch.json").write_text(json.dumps(result, indent=1))
    return {k: result[k] for k in ("watched_over_unwatched", "met")}


if __name__ == "__main__":
    main()
