"""The decision: each backbone's arms summarised, ranked by one stated rule, written as
``decision.md`` (the model-selection table, measured) and ``decision.json``."""

from __future__ import annotations

import statistics

ACCURACY_MARGIN = 0.05  # label accuracy this far below the best ranks an arm after the rest
FID_TIE = 0.10  # FIDs within 10% of the best of a group (or within the seed spread) tie

RULE = (f"1. arms whose training is estimated not to fit the target memory come last; "
        f"2. then arms whose label accuracy is more than {ACCURACY_MARGIN} below the best; "
        f"3. then by FID against the held-out images, lower first, where FIDs within "
        f"{FID_TIE:.0%} of the group's best (or within the spread over seeds) tie; "
        f"4. tied arms by training step time here, faster first.")


def summarise(backbone: str, arms: list[dict], target: dict, largest: dict | None,
              options: dict | None = None) -> dict:
    """One backbone's arms (one per seed) -> its row of the table."""
    mean = lambda k: statistics.fmean(a[k] for a in arms)  # noqa: E731
    fids = [a["fid"] for a in arms]
    steps = [a["step_ms"] for a in arms if a["step_ms"] is not None]
    return {
        "backbone": backbone, "preset": arms[0]["arm"]["preset"], "seeds": len(arms),
        "parameters": arms[0]["parameters"], "steps": arms[0]["steps"],
        "label_accuracy": mean("label_accuracy"), "fid": mean("fid"), "kid": mean("kid"),
        "kid_std": mean("kid_std") if all("kid_std" in a for a in arms) else None,
        "fid_spread": statistics.stdev(fids) if len(fids) > 1 else None,
        "diversity": mean("diversity"), "near_copy_share": mean("near_copy_share"),
        "loss_spikes": sum(a["loss_spikes"] for a in arms),
        "skipped_nonfinite": sum(a["skipped_nonfinite"] for a in arms),
        "step_ms": statistics.fmean(steps) if steps else None,
        "train_minutes": mean("train_minutes"),
        "sampling_ms_per_image": mean("sampling_ms_per_image"),
        "peak_memory_here_mib": max(a["peak_memory_here_mib"] for a in arms),
        "target": target, "largest_fitting": largest, "options": options or {},
    }


def rank(rows: list[dict]) -> tuple[list[str], dict[str, str]]:
    """The rule above -> (backbones best first, why each sits where it does)."""
    why: dict[str, str] = {}
    best_acc = max(r["label_accuracy"] for r in rows)

    def tier(r) -> int:
        if r["target"].get("fits") is False:
            why[r["backbone"]] = "does not fit the target memory"
            return 2
        if r["label_accuracy"] < best_acc - ACCURACY_MARGIN:
            why[r["backbone"]] = (f"label accuracy {r['label_accuracy']:.3f} is more than "
                                  f"{ACCURACY_MARGIN} below the best ({best_acc:.3f})")
            return 1
        return 0

    order: list[dict] = []
    for t in range(3):
        group = sorted((r for r in rows if tier(r) == t), key=lambda r: r["fid"])
        while group:
            lead = group[0]
            spread = max(r["fid_spread"] or 0.0 for r in group)
            ties = [r for r in group if r["fid"] <= lead["fid"] * (1 + FID_TIE) + spread]
            ties.sort(key=lambda r: (r["step_ms"] is None, r["step_ms"] or 0.0))
            alone = (f"lowest FID ({lead['fid']:.1f}), no other arm within {FID_TIE:.0%}"
                     if not order else f"FID {lead['fid']:.1f}, more than {FID_TIE:.0%} above "
                     "the arms before it")
            for r in ties:
                why.setdefault(r["backbone"], (
                    f"FID {r['fid']:.1f} ties with {len(ties)} arm(s) (within {FID_TIE:.0%} of "
                    f"{lead['fid']:.1f}); step {r['step_ms']} ms" if len(ties) > 1 else alone))
            order += ties
            group = [r for r in group if r not in ties]
    return [r["backbone"] for r in order], why


def gib(n: int | float | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f} GiB"


def fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def table(rows: list[dict], order: list[str], settings: dict) -> list[str]:
    """The plan's rows, measured: a column per backbone, in ranked order."""
    by = {r["backbone"]: r for r in rows}
    cols = [by[b] for b in order]
    t = settings
    target = (f"{t['target_image_size']} px, batch {t['target_batch']}, {t['target_precision']}"
              f"{', checkpointing' if t['target_checkpointing'] else ''}")

    def mem(r):
        e = r["target"]
        if "error" in e:
            return f"not estimated ({e['error']})"
        return f"{gib(e['peak'])} ({'fits' if e['fits'] else 'does not fit'})"

    def largest(r):
        x = r["largest_fitting"]
        return "none" if x is None else f"`{x['preset']}` ({x['parameters'] / 1e6:.1f} M, {gib(x['peak'])})"

    def option(r):
        fits = [(name, e) for name, e in r["options"].items() if e.get("fits")]
        if not r["options"]:
            return "not estimated"
        if not fits:
            return f"none of the {len(r['options'])} estimated"
        name, e = fits[0]
        return f"{name} ({gib(e['peak'])})"

    lines = [
        ("Recommendation (rank)", lambda r: f"**{order.index(r['backbone']) + 1}**"),
        ("Beginner-friendliness", lambda r: "same defaults, no tuning (not measured)"),
        ("Training stability: loss spikes / non-finite steps",
         lambda r: f"{r['loss_spikes']} / {r['skipped_nonfinite']}"),
        ("Training stability: FID spread over seeds",
         lambda r: fmt(r["fid_spread"], ".2f") if r["seeds"] > 1 else "needs --seeds ≥ 2"),
        (f"Memory on the target ({gib(t['target_memory'])}; {target})", mem),
        ("Largest preset that fits the target", largest),
        ("First memory option that fits the target (this preset)", option),
        ("Training time here: ms per step", lambda r: fmt(r["step_ms"], ".1f")),
        ("Training time here: steps / minutes", lambda r: f"{r['steps']} / {r['train_minutes']:.1f}"),
        ("Generation quality: FID (held-out)", lambda r: fmt(r["fid"], ".2f")),
        ("Generation quality: KID ± std over subsets (unbiased: ≤ 0 is within noise of 0)",
         lambda r: fmt(r["kid"], ".4g") + ("" if r.get("kid_std") is None
                                           else f" ± {r['kid_std']:.3g}")),
        ("Generation quality: label accuracy", lambda r: fmt(r["label_accuracy"])),
        ("Diversity / near-copy share", lambda r: f"{r['diversity']:.3f} / {r['near_copy_share']:.3f}"),
        ("Sampling ms per image here", lambda r: fmt(r["sampling_ms_per_image"], ".2f")),
        ("Peak training memory here (MiB)", lambda r: fmt(r["peak_memory_here_mib"], ".0f")),
        ("Parameters (preset)", lambda r: f"{r['parameters'] / 1e6:.2f} M (`{r['preset']}`)"),
    ]
    out = ["| | " + " | ".join(r["backbone"] for r in cols) + " |",
           "| --- |" + " --- |" * len(cols)]
    out += [f"| {name} | " + " | ".join(cell(r) for r in cols) + " |" for name, cell in lines]
    return out


def markdown(rows: list[dict], order: list[str], why: dict[str, str], settings: dict,
             machine: str, matched: str) -> str:
    best = order[0]
    text = [f"# Which backbone for {settings['data']}?", "",
            f"**Recommendation: {best}** — {why[best]}.", "",
            *table(rows, order, settings), "",
            f"**Rule.** {RULE}", "",
            "**Why each place.** " + "; ".join(f"{b}: {why[b]}" for b in order) + ".", "",
            f"**Fairness.** One shared autoencoder; {matched}; the same objective, batch, "
            "optimizer, data order, held-out split and budget for every arm.", "",
            "**Memory estimate.** The training step (loss, backward, clipping, AdamW, EMA) run on "
            "fake tensors at the target's latent size (an f8 autoencoder), every live tensor "
            "counted at the peak; validated against torch.profiler on CPU (docs/compare.md). It "
            "leaves out CUDA's context and workspaces (a few hundred MiB).", "",
            f"Measured on {machine}."]
    return "\n".join(text) + "\n"
