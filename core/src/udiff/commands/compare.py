"""``udiff compare``: which backbone for this data and this GPU, measured (docs/compare.md)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UdiffError

NAME = "compare"
HELP = "train every backbone as a fair arm on your data, judge them, rank them (decision.md)"


def add_arguments(p) -> None:
    p.add_argument("--data", metavar="DIR", help="'digits' or a folder of label folders "
                   "(required unless --collect)")
    p.add_argument("--out", required=True, metavar="DIR", help="the comparison's folder: an arm "
                   "run directory per backbone and seed, compare.json, commands.txt, decision.*")
    p.add_argument("--backbones", metavar="LIST", help="comma-separated, two or more (default: "
                   "every installed backbone)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-steps", type=int, metavar="N", help="stage-2 steps per arm "
                        "(default: the data's plan)")
    budget.add_argument("--budget-minutes", type=float, metavar="M", help="stage-2 training "
                        "minutes per arm on this machine (a timed probe turns them into steps)")
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="arms per backbone, seeds "
                   "0..K-1: the spread of their FID is the stability row (default: 1)")
    p.add_argument("--preset", metavar="NAME|B=NAME,...", help="presets (default: each "
                   "backbone's matched `bench` preset, else its default)")
    p.add_argument("--per-label", type=int, default=30, help="samples per label the judge "
                   "scores (default: 30)")
    p.add_argument("--autoencoder", metavar="RUN_DIR", help="share this run's trained "
                   "autoencoder instead of training one")
    p.add_argument("--config", metavar="FILE", help="run config (TOML/JSON) every arm shares; "
                   "the backbone lines are the comparison's")
    p.add_argument("--target-memory", default="8GiB", metavar="SIZE", help="the GPU memory the "
                   "estimate is checked against (default: 8GiB)")
    p.add_argument("--target-image-size", type=int, default=256, metavar="PIXELS",
                   help="image side of the estimate, through an f8 autoencoder (default: 256)")
    p.add_argument("--target-batch", type=int, metavar="N", help="batch of the estimate "
                   "(default: the arms')")
    p.add_argument("--target-precision", choices=("no", "bf16", "fp16"), default="bf16",
                   help="mixed precision of the estimate (default: bf16)")
    p.add_argument("--target-checkpointing", action="store_true",
                   help="the estimate with gradient checkpointing")
    p.add_argument("--resume", action="store_true", help="continue the comparison in --out: "
                   "finished arms are kept, a started one resumes from its checkpoint")
    p.add_argument("--plan-only", action="store_true", help="write the arms' configs and "
                   "commands.txt (one `udiff train` per line) and stop")
    p.add_argument("--collect", action="store_true", help="build decision.* from the finished "
                   "arms in --out (after running commands.txt elsewhere)")


def settings(args):
    from .. import plugins
    from ..compare.plan import Settings, check_backbones, config_file, parse_memory, parse_presets

    if args.data is None:
        raise UdiffError("--data is required (or --collect an existing comparison)")
    if args.seeds < 1:
        raise UdiffError(f"--seeds {args.seeds}: at least 1")
    if args.per_label < 2:
        raise UdiffError("--per-label must be at least 2 (FID needs two samples per set)")
    for flag, value in (("--budget-steps", args.budget_steps),
                        ("--budget-minutes", args.budget_minutes),
                        ("--target-image-size", args.target_image_size),
                        ("--target-batch", args.target_batch)):
        if value is not None and value <= 0:
            raise UdiffError(f"{flag} {value}: must be positive")
    if args.autoencoder and not (Path(args.autoencoder) / "run.json").is_file():
        raise UdiffError(f"--autoencoder {args.autoencoder}: not a finished run directory")
    backbones = check_backbones(args.backbones or ",".join(plugins.registry().components["denoiser"]))
    return Settings(args.data, backbones, parse_presets(args.preset, backbones), args.seeds,
                    args.budget_steps, args.budget_minutes, args.per_label, args.autoencoder,
                    config_file(args.config), parse_memory(args.target_memory),
                    args.target_image_size, args.target_batch, args.target_precision,
                    args.target_checkpointing)


def main(args) -> int:
    from ..compare.plan import COMMANDS
    from ..compare.runner import collect_only, compare

    out = Path(args.out)
    if args.collect:
        if args.plan_only or args.resume:
            raise UdiffError("--collect builds the table of --out as it stands: drop "
                             "--plan-only/--resume")
        result = collect_only(out)
    else:
        result = compare(settings(args), out, args.resume, args.plan_only)
        if result is None:
            print((out / COMMANDS).read_text(), end="")
            return 0
    print(f"recommendation: {result['recommendation']}  table: {out / 'decision.md'}  "
          f"picture: {out / 'decision.png'}")
    return 0
