"""Regenerate the result files the README's figures come from (issue 27), one step at a time on
an otherwise idle machine (timings are figures too). Each step writes a dated folder under
``--out`` with the machine beside its files; ``tests/test_readme_figures.py`` checks every README
figure against them.

    python benchmarks/readme_results.py --out benchmarks/results --work /tmp/udiff-results \\
        [--only demo,distill,memorization,lora-serving,presets,startup,conformance,your-data,
         compare]

``demo`` must run before ``distill`` and ``lora-serving`` (they start from the demo runs).
The guidance sweep and ``udiff bench perf --quick`` keep their own commands (README)."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

BACKBONES = ("unet", "dit", "flux")
DATE = datetime.date.today().isoformat()


def udiff(*argv) -> subprocess.CompletedProcess:
    """``udiff ARGV`` in a fresh process; its stderr (progress) passes through."""
    print("+ udiff", *map(str, argv), file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", "udiff", *map(str, argv)], stdout=subprocess.PIPE,
                          text=True)
    if proc.returncode:
        sys.exit(f"udiff {argv[0]} failed (exit {proc.returncode})")
    return proc


def machine() -> dict:
    """The machine as the benches name it, the vector flags the README names, the date."""
    from udiff.machine import machine as name

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"machine": name(), "lscpu_flags": [f for f in ("avx2", "avx512f", "fma") if f in flags],
            "python": platform.python_version(), "date": DATE}


def folder(out: Path, name: str) -> Path:
    path = out / f"{name}-{DATE}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "machine.json").write_text(json.dumps(machine(), indent=2) + "\n")
    return path


def demo(out: Path, work: Path) -> None:
    """``udiff demo`` for every backbone (the README's Measured table)."""
    dest = folder(out, "demo")
    for b in BACKBONES:
        udiff("demo", "--backbone", b, "--out", work / f"demo-{b}", "--overwrite")
        (dest / b).mkdir(exist_ok=True)
        for name in ("metrics.json", "samples.png"):
            shutil.copy(work / f"demo-{b}" / name, dest / b / name)
        shutil.copy(work / f"demo-{b}" / "run" / "run.json", dest / b / "run.json")


def distill(out: Path, work: Path) -> None:
    """A 4-step student of each demo run, scored and timed against its teacher."""
    students = []
    for b in BACKBONES:
        students.append(work / f"student-{b}")
        udiff("distill", work / f"demo-{b}" / "run", "--steps", "4", "--out", students[-1],
              "--overwrite")
    dest = folder(out, "distill") / "flow"
    udiff("bench", "distill", *students, "--out", dest, "--overwrite")


def memorization(out: Path, work: Path) -> None:
    """A Flux ``tiny`` trained 5000 steps on 5 digits per label: a model that copies."""
    from udiff import data as datasets
    from udiff.images import to_pil

    few = work / "few"
    shutil.rmtree(few, ignore_errors=True)
    digits = datasets.load("digits", 16, 1)
    for k in range(10):
        (few / str(k)).mkdir(parents=True)
        for j, i in enumerate((digits.labels == k).nonzero()[:5, 0]):
            to_pil(digits.images[i:i + 1])[0].save(few / str(k) / f"{j}.png")
    config = work / "few.toml"
    config.write_text("[data]\nchannels = 1\n[training]\nautoencoder_holdout = 0.0\n")
    udiff("train", "--config", config, "--data", few, "--backbone", "flux", "--preset", "tiny",
          "--autoencoder-steps", "300", "--max-steps", "5000", "--batch-size", "50", "--lr",
          "2e-3", "--out", work / "overtrained", "--overwrite")
    dest = folder(out, "memorization")
    udiff("eval", work / "overtrained", "--per-label", "10", "--out", dest / "overtrained.json")


def lora_serving(out: Path, work: Path, users: int = 31) -> None:
    """31 users' LoRA runs (rank 4) of the demo UNet: parameter bytes served together, one
    alone, each with its own copy; the peak RSS of a process that loads them (fresh each)."""
    base = work / "demo-unet" / "run"
    if not (work / "base" / "unet").is_dir():
        udiff("export", base, "--out", work / "base", "--overwrite")
    runs = []
    for k in range(users):
        runs.append(work / "lora" / f"user{k:02d}")
        if not (runs[-1] / "run.json").is_file():  # trained before: reused
            udiff("train", "--data", "digits", "--batch-size", "16", "--backbone", "unet",
                  "--autoencoder", base, "--init-from", work / "base" / "unet", "--lora-rank",
                  "4", "--max-steps", "4", "--seed", k, "--out", runs[-1], "--overwrite")
    probe = ("import json, resource, sys; from udiff.serve import runs as served; "
             "dirs = sys.argv[2:]; separate = sys.argv[1] == 'separate'; "
             "got = [served.load([d]) for d in dirs] if separate else [served.load(dirs)]; "
             "print(json.dumps({'parameter_bytes': sum(served.parameter_bytes(g) for g in got), "
             "'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))")
    counted = json.loads((runs[0] / "run.json").read_text())["parameters"]
    result = {"users": users, "rank": 4, "parameters": counted,
              "trained_share": round(counted["trainable"] / counted["total"], 4)}
    for name, mode, dirs in (("together", "together", runs), ("one", "together", runs[:1]),
                             ("separate", "separate", runs)):
        proc = subprocess.run([sys.executable, "-c", probe, mode, *map(str, dirs)],
                              capture_output=True, text=True, check=True)
        got = json.loads(proc.stdout.splitlines()[-1])
        result[name] = {"parameter_mb": round(got["parameter_bytes"] / 1e6, 1),
                        "peak_rss_mb": round(got["peak_rss_bytes"] / 1e6)}
    (folder(out, "lora-serving") / "memory.json").write_text(json.dumps(result, indent=2) + "\n")


def presets(out: Path, work: Path) -> None:
    """Parameters and MACs of the named presets, on the meta device (``udiff info``)."""
    rows = []  # the bench presets at the bench's 16x16x4 latents; the large ones at 256 px
    for backbone, preset, size in (("unet", "bench", 128), ("dit", "bench", 128),
                                   ("flux", "bench", 128), ("unet", "sd15", 256),
                                   ("dit", "XL/2", 256), ("flux", "xl", 256), ("flux", "dev", 256)):
        rows.append(json.loads(udiff("info", "--backbone", backbone, "--preset", preset,
                                     "--image-size", size, "--json").stdout))
    (folder(out, "presets") / "info.json").write_text(json.dumps(rows, indent=2) + "\n")


def startup(out: Path, work: Path, repeats: int = 3) -> None:
    """Wall time of the light commands against ``import torch`` (3 runs each)."""
    commands = {"import torch": [sys.executable, "-c", "import torch"],
                "udiff --help": [sys.executable, "-m", "udiff", "--help"],
                "udiff train --help": [sys.executable, "-m", "udiff", "train", "--help"],
                "udiff plugins": [sys.executable, "-m", "udiff", "plugins"],
                "udiff plugins --json": [sys.executable, "-m", "udiff", "plugins", "--json"]}
    result = {}
    for name, cmd in commands.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(round(time.perf_counter() - start, 2))
        result[name] = {"seconds": times, "min": min(times), "max": max(times)}
    (folder(out, "startup") / "startup.json").write_text(json.dumps(result, indent=2) + "\n")


def conformance(out: Path, work: Path) -> None:
    """``udiff.testing.check_denoiser`` on every built-in backbone: the held-out loss of the
    fixed denoising task after 100 steps (the bound is 0.5)."""
    from udiff.testing import check_denoiser

    rows = {b: check_denoiser(b, "tiny")["held_out_loss"] for b in BACKBONES}
    (folder(out, "conformance") / "conformance.json").write_text(
        json.dumps({"held_out_loss": rows, "bound": 0.5}, indent=2) + "\n")


def your_data(out: Path, work: Path) -> None:
    """Issue 29's targets on the font set (20 fonts x 120 glyphs, 32 px): ``udiff train --data
    fonts --out R`` with no other flag, scored by ``udiff eval``; then the same with
    ``--early-stop`` on a longer run."""
    from udiff.fontset import render

    fonts = work / "fonts"
    shutil.rmtree(fonts, ignore_errors=True)
    render(fonts, size=32, labels=20, per_label=120)
    dest = folder(out, "your-data")
    udiff("data", fonts, "--out", dest / "data")
    for name, extra in (("default", ()), ("early-stop", ("--max-steps", "6000", "--early-stop",
                                                        "2", "--validate-every", "300"))):
        run = work / f"fonts-{name}"
        udiff("train", "--data", fonts, "--out", run, "--overwrite", *extra)
        udiff("eval", run, "--out", dest / name / "metrics.json")
        for f in ("run.json", "log.jsonl", "training.png", "config.toml"):
            shutil.copy(run / f, dest / name / f)
        rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        (dest / name / "validation.json").write_text(json.dumps(
            [r for r in rows if r["stage"] == "validation"], indent=1) + "\n")


def compare(out: Path, work: Path) -> None:
    """Issue 30's targets: the memory estimate against torch.profiler (every built-in's small and
    bench preset at two batches) and for Stable Diffusion 1.5's UNet at 256 px; then ``udiff
    compare --budget-minutes 5`` of the three built-ins on the digits and on the font set."""
    from udiff.bench.cases import Case
    from udiff.bench.footprint import estimate, profiled
    from udiff.fontset import render

    dest = folder(out, "compare")
    rows = []
    for b in BACKBONES:
        for preset in ("small", "bench"):
            for batch in (16, 64):
                case = Case(b, preset, batch)
                est, real = estimate(case), profiled(case)
                rows.append({"case": case.id, "estimate": est.as_dict(), "profiler_peak": real,
                             "error": round(est.peak / real - 1, 5)})
    sd = Case("unet", "sd15", 4, device="cuda", latent_size=32, mixed_precision="bf16",
              gradient_checkpointing=True)
    (dest / "memory.json").write_text(json.dumps({
        "validation": rows, "sd15_256px_batch4_bf16_checkpointing": estimate(sd).as_dict(),
        "plan_claim_gb": [6, 8]}, indent=1) + "\n")
    fonts = work / "fonts"
    if not fonts.exists():
        render(fonts, size=32, labels=20, per_label=120)
    for name, data in (("digits", "digits"), ("fonts", fonts)):
        run = work / f"compare-{name}"
        shutil.rmtree(run, ignore_errors=True)
        start = time.time()
        udiff("compare", "--data", data, "--out", run, "--budget-minutes", "5")
        (dest / name).mkdir(exist_ok=True)
        for f in ("decision.md", "decision.json", "decision.png", "commands.txt"):
            shutil.copy(run / f, dest / name / f)
        (dest / name / "wall.json").write_text(json.dumps(
            {"wall_seconds": round(time.time() - start, 1)}) + "\n")


STEPS = {"demo": demo, "distill": distill, "memorization": memorization,
         "lora-serving": lora_serving, "presets": presets, "startup": startup,
         "conformance": conformance, "your-data": your_data, "compare": compare}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--work", type=Path, default=Path("/tmp/udiff-results"))
    p.add_argument("--only", default=",".join(STEPS), help="steps, comma-separated")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        start = time.time()
        STEPS[name](args.out, args.work)
        print(f"readme_results: {name} done in {time.time() - start:.0f} s", file=sys.stderr,
              flush=True)


if __name__ == "__main__":
    main()
