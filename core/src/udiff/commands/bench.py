"""``udiff bench perf|serve|guidance|distill``: the pytest-benchmark harness over every installed
backbone (``perf``, the ``udiff-core[bench]`` extra), the load test of ``udiff serve``, and the
sweeps over trained runs (``guidance``, ``distill``)."""

from __future__ import annotations

import json

NAME = "bench"
HELP = "benchmarks: perf (every installed backbone), serve, guidance, distill"
EXTRA = "udiff-core[bench]"


def add_arguments(p) -> None:
    from .flags import subcommands

    sub = subcommands(p, "bench", "perf|serve|guidance|distill", "what to benchmark")
    perf = sub.add_parser("perf", help="every installed backbone under pytest-benchmark: speed, "
                          f"memory, quality, ratios (needs {EXTRA})")
    perf.add_argument("--backbones", metavar="LIST",
                      help="comma-separated (default: every installed backbone)")
    perf.add_argument("--preset", metavar="NAME",
                      help="preset of every backbone (default: bench; --quick: tiny)")
    perf.add_argument("--batches", metavar="LIST",
                      help="comma-separated batch sizes (default: 16,64; --quick: 8)")
    perf.add_argument("--quick", action="store_true",
                      help="tiny presets, few rounds (~2 min CPU)")
    perf.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                      help="where to run (default: cpu)")
    perf.add_argument("--strict", action="store_true", help="exit 2 when a ratio falls outside "
                      "its bound (report.md's bound column, what CI holds; the report is "
                      "written first)")
    out(perf, "bench.json, report.md/png, ratios.json")
    serve = sub.add_parser("serve", help="closed-loop clients against `udiff serve RUN_DIR`, "
                           "batching on and off (serve.json/md/png)")
    serve.add_argument("run_dir", metavar="RUN_DIR", help="the run to serve")
    serve.add_argument("--concurrency", metavar="LIST", default="1,4,16,64",
                       help="concurrent clients per point (default: 1,4,16,64)")
    serve.add_argument("--seconds", type=float, default=10.0, metavar="S",
                       help="length of each point (default: 10; --quick: 2)")
    serve.add_argument("--quick", action="store_true", help="2 s per point")
    serve.add_argument("--strict", action="store_true",
                       help="exit 2 when a ratio misses its target")
    out(serve, "serve.json, serve.md, serve.png")
    guidance = sub.add_parser("guidance", help="guidance scale x interval on trained runs, "
                              "scored by udiff eval's judge (guidance.json/md/png)")
    guidance.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="trained runs")
    guidance.add_argument("--scales", metavar="LIST", default="1,1.5,2,3,4",
                          help="guidance scales (default: 1,1.5,2,3,4)")
    guidance.add_argument("--intervals", metavar="LIST", default="0-1,0.2-0.8,0-0.6",
                          help="guidance intervals LO-HI on t/T, 1 = pure noise "
                          "(default: 0-1,0.2-0.8,0-0.6)")
    per_label(guidance)
    out(guidance, "guidance.json, guidance.md, guidance.png")
    distill = sub.add_parser("distill", help="students of `udiff distill` against their "
                             "teachers: quality and ms per image (distill.json/md/png)")
    distill.add_argument("run_dirs", nargs="+", metavar="STUDENT_DIR",
                         help="runs of udiff distill")
    per_label(distill)
    out(distill, "distill.json, distill.md, distill.png")


def out(p, what: str) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help=f"folder for {what}")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")


def per_label(p) -> None:
    p.add_argument("--per-label", type=int, default=30, metavar="N",
                   help="samples per label (default: 30, as udiff eval)")


def main(args) -> int:
    return {"perf": perf, "serve": serve, "guidance": guidance, "distill": distill}[args.bench](
        args)


def perf(args) -> int:
    from ..errors import UdiffError

    try:
        import pytest  # noqa: F401
        import pytest_benchmark  # noqa: F401
    except ImportError as e:
        raise UdiffError(f"udiff bench perf needs the benchmark harness ({e.name} is not "
                         f"installed): pip install '{EXTRA}'") from None
    from ..bench import run as bench

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
    from ..errors import UdiffError
    from ..serve import loadtest as serving

    try:
        levels = tuple(int(c) for c in args.concurrency.split(","))
    except ValueError:
        raise UdiffError(f"--concurrency {args.concurrency}: comma-separated integers") from None
    if not levels or min(levels) < 1:
        raise UdiffError(f"--concurrency {args.concurrency}: each at least 1")
    result = serving.run(args.run_dir, args.out, levels, 2.0 if args.quick else args.seconds,
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
    from ..errors import UdiffError
    from ..sampling.guidance import parse_interval
    from ..sweeps import guidance as sweep

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
    result = sweep.run(args.run_dirs, args.out, scales, intervals, args.per_label,
                       overwrite=args.overwrite)
    print(f"{len(result['rows'])} settings; report: {args.out}/guidance.md  "
          f"{args.out}/guidance.png  {args.out}/guidance.json")
    return 0


def distill(args) -> int:
    from ..errors import UdiffError
    from ..sweeps import distill as students

    if args.per_label < 2:
        raise UdiffError("--per-label: at least 2")
    result = students.run(args.run_dirs, args.out, args.per_label, overwrite=args.overwrite)
    print(f"{len(result['rows'])} rows; report: {args.out}/distill.md  {args.out}/distill.png  "
          f"{args.out}/distill.json")
    return 0
