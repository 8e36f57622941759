"""``decision.png``: quality against training time, estimated memory against the target, and a
sample grid per arm side by side."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def decision_png(rows: list[dict], order: list[str], pictures: dict[str, Image.Image],
                 target_memory: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r["backbone"]: r for r in rows}
    fig = plt.figure(figsize=(4.2 * max(3, len(order)), 8.4))
    top = fig.add_gridspec(2, 2, height_ratios=[1, 1.2])
    ax = fig.add_subplot(top[0, 0])
    for b in order:
        r = by[b]
        ax.scatter(r["train_minutes"], r["fid"], s=60)
        if r["fid_spread"]:
            ax.errorbar(r["train_minutes"], r["fid"], yerr=r["fid_spread"], fmt="none")
        ax.annotate(f"{b} (acc {r['label_accuracy']:.2f})", (r["train_minutes"], r["fid"]),
                    textcoords="offset points", xytext=(6, 4))
    ax.set(xlabel="stage-2 training minutes here", ylabel="FID vs held-out (lower is better)",
           title="quality against training time")
    ax = fig.add_subplot(top[0, 1])
    peaks = [by[b]["target"].get("peak", 0) / 2**30 for b in order]
    ax.bar(order, peaks, color=["tab:green" if by[b]["target"].get("fits") else "tab:red"
                                for b in order])
    ax.axhline(target_memory / 2**30, color="k", linestyle="--",
               label=f"target {target_memory / 2**30:.0f} GiB")
    ax.set(ylabel="estimated training peak (GiB)", title="memory at the target size")
    ax.legend()
    grids = fig.add_gridspec(2, len(order))
    for i, b in enumerate(order):
        ax = fig.add_subplot(grids[1, i])
        ax.imshow(pictures[b], cmap="gray" if pictures[b].mode == "L" else None)
        ax.set_title(f"{i + 1}. {b}: FID {by[b]['fid']:.1f}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
