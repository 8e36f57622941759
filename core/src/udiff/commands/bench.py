"""``udiff bench``: every installed backbone under pytest-benchmark, and the report."""

from __future__ import annotations

import json

NAME = "bench"
HELP = "benchmark every installed backbone (pytest-benchmark)"


def add_arguments(p) -> None:
    p.add_argument("target", nargs="*",
                   metavar="serve RUN_DIR | guidance RUN_DIR... | distill STUDENT_DIR...",
                   help="`serve RUN_DIR`: the load benchmark of `udiff serve` on that run "
                   "instead (serve.json/md/png); `guidance RUN_DIR...`: guidance scale x "
                   "interval on those runs (guidance.json/md/png); `distill STUDENT_DIR...`: "
                   "students of `udiff distill` against their teachers, quality and ms per "
                   "image (distill.json/md/png)")
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
    p.add_argument("--concurrency", metavar="LIST", default="1,4,16,64",
                   help="bench serve: concurrent clients per point (default: 1,4,16,64)")
    p.add_argument("--seconds", type=float, default=10.0, metavar="S",
                   help="bench serve: length of each point (default: 10; --quick: 2)")
    p.add_argument("--scales", metavar="LIST", default="1,1.5,2,3,4",
                   help="bench guidance: guidance scales (default: 1,1.5,2,3,4)")
    p.add_argument("--intervals", metavar="LIST", default="0-1,0.2-0.8,0-0.6",
                   help="bench guidance: guidance intervals LO-HI on t/T, 1 = pure noise "
                   "(default: 0-1,0.2-0.8,0-0.6)")
    p.add_argument("--per-label", type=int, default=30, metavar="N",
                   help="bench guidance, distill: samples per label (default: 30, as udiff eval)")
    p.add_argument("--strict", action="store_true", help="exit 2 when a ratio falls outside its "
                   "bound (report.md's bound column, what CI holds; the report is written first)")


def main(args) -> int:
    from ..bench import run as bench
    from ..errors import UdiffError

    if args.target[:1] == ["guidance"]:
        return guidance(args)
    if args.target[:1] == ["distill"]:
        return distill(args)
    if args.target:
        return serve(args)

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


def serve(args) -> int:
    from ..bench import serving
    from ..errors import UdiffError

    if args.target[0] != "serve" or len(args.target) != 2:
        raise UdiffError(f"udiff bench: unknown target {' '.join(args.target)!r}; "
                         "the targets are: serve RUN_DIR, guidance RUN_DIR..., distill STUDENT_DIR...")
    try:
        levels = tuple(int(c) for c in args.concurrency.split(","))
    except ValueError:
        raise UdiffError(f"--concurrency {args.concurrency}: comma-separated integers") from None
    if not levels or min(levels) < 1:
        raise UdiffError(f"--concurrency {args.concurrency}: each at least 1")
    result = serving.run(args.target[1], args.out, levels, 2.0 if args.quick else args.seconds,
                         args.overwrite)
    print(json.dumps(result["ratios"]))
    print(f"report: {args.out}/serve.md  {args.out}/serve.png  {args.out}/serve.json")
    if result["ratios"]["lost"]:
        raise UdiffError(f"{result['ratios']['lost']} request(s) were lost")
    outside = [f"{k} {v:.3f} (target {op} {t})" for k, v in result["ratios"].items()
               if k in serving.TARGETS for op, t in [serving.TARGETS[k]]
               if not (v >= t if op == ">=" else v <= t)]
    if args.strict and outside:
        raise UdiffError(f"--strict: {'; '.join(outside)}")
    return 0


def guidance(args) -> int:
    from ..bench import guidance as sweep
    from ..errors import UdiffError
    from ..sampling.guidance import parse_interval

    if len(args.target) < 2:
        raise UdiffError("udiff bench guidance: give at least one RUN_DIR")
    try:
        scales = tuple(float(s) for s in args.scales.split(","))
    except ValueError:
        raise UdiffError(f"--scales {args.scales}: comma-separated numbers") from None
    try:
        intervals = tuple(parse_interval(iv.replace("-", ",")) for iv in args.intervals.split(","))
    except ValueError:
        raise UdiffError(f"--intervals {args.intervals}: comma-separated LO-HI with "
                         "0 <= LO <= HI <= 1") from None
    if min(scales) < 1 or args.per_label < 2:
        raise UdiffError("--scales: each at least 1; --per-label: at least 2")
    result = sweep.run(args.target[1:], args.out, scales, intervals, args.per_label,
                       overwrite=args.overwrite)
    print(f"{len(result['rows'])} settings; report: {args.out}/guidance.md  "
          f"{args.out}/guidance.png  {args.out}/guidance.json")
    return 0


def distill(args) -> int:
    from ..bench import distill as students
    from ..errors import UdiffError

    if len(args.target) < 2:
        raise UdiffError("udiff bench distill: give at least one STUDENT_DIR (a udiff distill run)")
    if args.per_label < 2:
        raise UdiffError("--per-label: at least 2")
    result = students.run(args.target[1:], args.out, args.per_label, overwrite=args.overwrite)
    print(f"{len(result['rows'])} rows; report: {args.out}/distill.md  {args.out}/distill.png  "
          f"{args.out}/distill.json")
    return 0
