"""``udiff bench``: every installed backbone under pytest-benchmark, and the report."""

from __future__ import annotations

import json

NAME = "bench"
HELP = "benchmark every installed backbone (pytest-benchmark)"


def add_arguments(p) -> None:
    p.add_argument("--backbones", metavar="LIST",
                   help="comma-separated (default: every installed backbone)")
    p.add_argument("--preset", metavar="NAME",
                   help="preset of every backbone (default: bench; --quick: tiny)")
    p.add_argument("--batches", metavar="LIST",
                   help="comma-separated batch sizes (default: 16,64; --quick: 8)")
    p.add_argument("--quick", action="store_true", help="tiny presets, few rounds (~2 min CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where to run (default: cpu)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for bench.json, report.md/png, ratios.json")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--strict", action="store_true", help="exit 2 when a ratio falls outside its "
                   "bound (report.md's bound column, what CI holds; the report is written first)")


def main(args) -> int:
    from ..bench import run as bench
    from ..errors import UdiffError

    rat = bench.run(args.out, backbones=args.backbones, preset=args.preset, batches=args.batches,
                    quick=args.quick, device=args.device, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in rat.items() if k not in ("details", "targets")}))
    print(f"report: {args.out}/report.md  {args.out}/report.png  {args.out}/ratios.json")
    outside = [f"{k} {rat[k]:.3f} (bound {t['bound']}, target {t['target']})"
               for k, t in rat["targets"].items() if t["within_bound"] is False]
    if args.strict and outside:
        raise UdiffError(f"--strict: {len(outside)} ratio(s) outside their bound: "
                         f"{'; '.join(outside)}")
    return 0
