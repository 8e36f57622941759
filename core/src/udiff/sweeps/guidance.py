"""``udiff bench guidance RUN_DIR... --out DIR``: guidance scale x guidance interval on trained runs.

Every setting samples the same labels from the same seeds and is scored by ``udiff eval``'s judge
(one reference classifier per run): label accuracy against FID/KID, diversity and the near-copy
share. The interval is on the normalised timestep (1 = pure noise); Kynkäänniemi et al. (2024)
found guidance at the highest noise levels collapses variety and at the lowest does little.
Writes guidance.json, guidance.md (the table) and guidance.png (accuracy against FID per run).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..evaluation.evaluate import Judge
from ..machine import machine
from ..run.files import prepare_out, write_json
from . import tables

SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)
INTERVALS = ((0.0, 1.0), (0.2, 0.8), (0.0, 0.6))  # all of it; the middle; away from pure noise


def run(run_dirs: list[str], out: str | Path, scales=SCALES, intervals=INTERVALS,
        per_label: int = 30, steps: int | None = None, seed: int = 0,
        overwrite: bool = False, progress: bool = True) -> dict:
    out = Path(out)
    # bad runs fail before --out; each sweeps its own spec (sampler, steps, rescale)
    judges = [Judge(r, progress=progress, steps=steps, seed=seed) for r in run_dirs]
    prepare_out(out, overwrite)
    rows = []
    for judge in judges:
        labels = range(len(judge.data.label_names))
        settings = [(s, iv) for s in scales for iv in (intervals if s != 1 else intervals[:1])]
        for scale, interval in settings:  # scale 1 is unguided whatever the interval
            start = time.time()
            spec = judge.spec.but(guidance=scale, interval=interval)
            images, got = judge.pipe.sample_tensor(labels, per_label, spec)
            scores, _ = judge.score(images, got)
            rows.append({"run": str(judge.run_dir), "backbone": judge.cfg.denoiser.name,
                         "trained_with": judge.pipe.scheduler_name,
                         "sampler": spec.sampler, "steps": spec.steps, "guidance": scale,
                         "interval": list(interval), "label_accuracy": scores["label_accuracy"],
                         "fid": scores["fid"], "kid": scores["kid"],
                         "diversity": scores["diversity"],
                         "near_copies": scores["memorization"]["features"]["near_copy_share"],
                         "seconds": round(time.time() - start, 1)})
            if progress:
                r = rows[-1]
                print(f"udiff bench guidance: {r['backbone']} guidance {scale:g} interval "
                      f"{fmt_interval(interval)}: accuracy {r['label_accuracy']:.3f} FID "
                      f"{r['fid']:.1f}", file=sys.stderr, flush=True)
    result = {"machine": machine(), "per_label": per_label, "seed": seed,
              "fid_features": judges[0].features.name, "rows": rows}
    write_json(out / "guidance.json", result)
    (out / "guidance.md").write_text(markdown(result))
    chart(result, out / "guidance.png")
    return result


def fmt_interval(iv) -> str:
    return "all" if tuple(iv) == (0.0, 1.0) else f"[{iv[0]:g}, {iv[1]:g}]"


def markdown(result: dict) -> str:
    return tables.report("guidance", result, "interval on t/T (1 = pure noise).", [
        ("backbone", lambda r: r["backbone"]), ("trained with", lambda r: r["trained_with"]),
        ("sampler", lambda r: f"{r['sampler']} {r['steps']}"),
        ("guidance", lambda r: f"{r['guidance']:g}"),
        ("interval", lambda r: fmt_interval(r["interval"])), *tables.SCORES,
        ("near-copies", lambda r: f"{r['near_copies']:.3f}")])


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    runs = list(dict.fromkeys(r["run"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        rows = [r for r in result["rows"] if r["run"] == run]
        unguided = [r for r in rows if r["guidance"] == 1]
        for i, iv in enumerate(dict.fromkeys(tuple(r["interval"]) for r in rows)):
            line = unguided + [r for r in rows if tuple(r["interval"]) == iv and r["guidance"] != 1]
            ax.plot([r["fid"] for r in line], [r["label_accuracy"] for r in line], "o-",
                    color=f"C{i}", label=f"interval {fmt_interval(iv)}")
            for r in line:
                ax.annotate(f"{r['guidance']:g}", (r["fid"], r["label_accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # 2x10^0 ... overlapped
        ax.set_xlabel("FID (lower is better)")
        ax.set_ylabel("label accuracy")
        ax.set_title(f"{rows[0]['backbone']} ({rows[0]['trained_with']})", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
