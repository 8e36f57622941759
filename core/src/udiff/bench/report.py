"""pytest-benchmark JSON -> ``report.md`` (backbone x measure, ratios to the first backbone),
``report.png`` (bar charts of the same) and ``ratios.json``."""

from __future__ import annotations

import json
from pathlib import Path

from ..run.files import write_json
from .ratios import BOUNDS, TARGETS

MEASURES = [  # (key, label, unit, lower is better)
    ("params", "parameters", "M", True),
    ("macs_per_forward", "MACs / forward (batch 1)", "M", True),
    ("train_step_s", "train step", "ms", True),
    ("train_peak_mb", "train peak memory", "MiB", True),
    ("sample_per_image_s", "sampling / image", "ms", True),
    ("sample_peak_mb", "sampling peak memory", "MiB", True),
]
SCALE = {"M": 1e-6, "ms": 1e3, "MiB": 1.0}


def rows(bench: dict) -> dict[str, dict]:
    """One row per (backbone, preset, batch): the measures above."""
    out: dict[str, dict] = {}
    for b in bench["benchmarks"]:
        info = b["extra_info"]
        if info.get("kind") not in ("train", "sample"):
            continue
        row = out.setdefault(info["case"], {k: info[k] for k in (
            "backbone", "preset", "batch", "device", "latent_size", "steps", "guidance", "params",
            "macs_per_forward", "memory_method")})
        median = b["stats"]["median"]
        if info["kind"] == "train":
            row.update(train_step_s=median, train_peak_mb=info["peak_mb"])
        else:
            row.update(sample_per_image_s=median / info["images_per_call"],
                       sample_peak_mb=info["peak_mb"])
    return out


def ratios(bench: dict) -> dict:
    found = {b["extra_info"]["key"]: b["extra_info"] for b in bench["benchmarks"]
             if b["extra_info"].get("kind") == "ratio"}
    skipped = {k: v["skipped"] for k, v in found.items() if "skipped" in v}
    found = {k: v for k, v in found.items() if k not in skipped}
    out: dict = {}
    if "train_overhead" in found:
        out["train_overhead"] = found["train_overhead"]["ratio"]
    if "sample_overhead" in found:
        out["sample_overhead"] = found["sample_overhead"]["ratio"]
    if "latent_cache_speedup" in found:
        out["latent_cache_speedup"] = found["latent_cache_speedup"]["ratio"]
    if "checkpointing" in found:
        out["checkpointing_memory_ratio"] = found["checkpointing"]["memory_ratio"]
        out["checkpointing_time_ratio"] = found["checkpointing"]["time_ratio"]
    if "dpm20_vs_ddim50_accuracy_gap" in found:
        out["dpm20_vs_ddim50_accuracy_gap"] = found["dpm20_vs_ddim50_accuracy_gap"]["gap"]
    if "compile_speedup" in found:
        out["compile_speedup"] = found["compile_speedup"]["speedup"]
    if "lora" in found:  # reported, no target: the saving depends on the model's size
        out["lora_memory_ratio"] = found["lora"]["memory_ratio"]
        out["lora_trainable_fraction"] = found["lora"]["trainable_fraction"]
    if "adamw8bit" in found:
        out["adamw8bit_state_ratio"] = found["adamw8bit"]["ratio"]
    if "base_precision" in found:
        for precision, r in found["base_precision"]["ratios"].items():
            out[f"{precision}_base_memory_ratio"] = r
    out["targets"] = {k: {"target": f"{op} {v}", "met": _met(out.get(k), op, v),
                          "bound": f"{op} {BOUNDS[k]}",
                          "within_bound": _met(out.get(k), op, BOUNDS[k])}
                      for k, (op, v) in TARGETS.items() if k in out}
    out["details"] = found
    out["skipped"] = skipped
    return out


def _met(value, op: str, target: float) -> bool | None:
    if value is None:
        return None
    return value <= target if op == "<=" else value >= target


def _fmt(v, unit: str) -> str:
    x = v * SCALE[unit]
    return f"{x:,.3g}" if x < 100 else f"{x:,.0f}"


def markdown(table: dict[str, dict], rat: dict, machine: str) -> str:
    lines = [f"# udiff bench — {machine}", ""]
    by_batch: dict[int, list[dict]] = {}
    for row in table.values():
        by_batch.setdefault(row["batch"], []).append(row)
    for n, group in by_batch.items():
        first = group[0]
        lines += [f"## batch {n} (preset `{first['preset']}`, latents 4×{first['latent_size']}²,"
                  f" {first['device']}, sampling {first['steps']} steps with CFG "
                  f"{first['guidance']}); ×: ratio to `{first['backbone']}`", "",
                  "| measure | " + " | ".join(r["backbone"] for r in group) + " |",
                  "| --- |" + " --- |" * len(group)]
        for key, label, unit, _ in MEASURES:
            cells = []
            for r in group:
                if key not in r:
                    cells.append("–")
                    continue
                ratio = r[key] / first[key] if first.get(key) else float("nan")
                cells.append(f"{_fmt(r[key], unit)} {unit} (×{ratio:.2f})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    method = next(iter(table.values()))["memory_method"] if table else "n/a"
    lines += [f"Memory: {method}.", "", "## Ratios (median of paired A/B runs)", "",
              "| ratio | value | target | met | bound (`--strict`, CI) | within |",
              "| --- | --- | --- | --- | --- | --- |"]
    for key, value in rat.items():
        if key in ("targets", "details", "skipped"):
            continue
        t = rat["targets"].get(key, {"target": "reported", "met": None, "bound": "–",
                                     "within_bound": None})
        yes = {True: "yes", False: "**no**", None: "–"}
        lines.append(f"| `{key}` | {value:.3f} | {t['target']} | {yes[t['met']]} | {t['bound']} "
                     f"| {yes[t['within_bound']]} |")
    for key, reason in rat.get("skipped", {}).items():
        lines.append(f"| `{key}` | skipped: {reason} | – | – | – | – |")
    return "\n".join(lines) + "\n"


def chart(table: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(3.2 * len(MEASURES), 3.4))
    names = [f"{r['backbone']}\nb{r['batch']}" for r in table.values()]
    for ax, (key, label, unit, _) in zip(axes, MEASURES, strict=True):
        values = [r.get(key, 0) * SCALE[unit] for r in table.values()]
        ax.bar(names, values, color=[f"C{i % 10}" for i in range(len(values))])
        ax.set_title(f"{label}\n({unit})", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(bench_json: Path, out: Path) -> dict:
    bench = json.loads(Path(bench_json).read_text())
    table, rat = rows(bench), ratios(bench)
    m = bench.get("machine_info", {})
    machine = f"{m.get('cpu', {}).get('brand_raw', m.get('processor', '?'))}, {m.get('node', '')}"
    (out / "report.md").write_text(markdown(table, rat, machine))
    chart(table, out / "report.png")
    write_json(out / "ratios.json", rat)
    return rat
