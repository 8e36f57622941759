"""``udiff train``: flags generated from the run config (:mod:`.flags`), plus the run's own."""

from __future__ import annotations

import os

from ..errors import UdiffError
from . import flags

NAME = "train"
HELP = "train autoencoder + denoiser into a run directory"


def add_common(p, which: tuple[flags.Flag, ...], defaults: dict | None = None) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML or JSON run config (the format of a "
                   "run's config.toml); flags override it")
    flags.add(p, which, defaults)


def add_arguments(p) -> None:
    add_common(p, flags.TRAIN_FLAGS)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest complete checkpoint")
    p.add_argument("--no-estimate", action="store_true", help="skip the timed probe that "
                   "estimates the run's wall time before training")
    p.add_argument("--plan-only", action="store_true", help="print the data's summary, the "
                   "plan's choices and the time estimate as JSON, and write nothing")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="data-parallel training in N processes: starts `accelerate launch "
                   "--multi_gpu --num_processes N -m udiff train ...` (CPU: gloo, GPU: NCCL)")


def resolve_config(args, which: tuple[flags.Flag, ...], defaults: dict | None = None):
    from ..config import read_file, resolve

    o = flags.overrides(args, which)
    if args.config and "name" in o.get("denoiser", {}):
        # Switching backbone keeps the file's other lines but not the old backbone's options.
        file_den = read_file(args.config).get("denoiser", {})
        if file_den.get("name") not in (None, o["denoiser"]["name"]):
            o["denoiser"].setdefault("options", {})
    return resolve(args.config, o, defaults)


def planned(args):
    """The run config, with defaults chosen from a folder's data where the user gave none
    (:mod:`udiff.training.planning`); -> (config, the data's report, the plan's rows)."""
    from ..config import merge, read_file
    from ..data_report import scan
    from ..training import planning
    from ..training.setup import training_on_cpu

    cfg = resolve_config(args, flags.TRAIN_FLAGS)
    if cfg.data.source == "digits" or cfg.distill:
        return cfg, None, None
    report = scan(cfg.data.source, f"--data {cfg.data.source}", strict=True)
    given = merge(read_file(args.config) if args.config else {},
                  flags.overrides(args, flags.TRAIN_FLAGS))
    device = "cpu" if training_on_cpu(cfg.training) else "cuda"
    defaults, rows = planning.choose(report, given, device)
    return resolve_config(args, flags.TRAIN_FLAGS, defaults), report, rows


def main(args) -> int:
    from ..training import Trainer

    cfg, report, rows = planned(args)
    if args.resume and args.overwrite:
        raise UdiffError("--resume continues what --out holds; --overwrite would replace it: "
                         "choose one")
    if args.plan_only:
        import json

        print(json.dumps(Trainer(cfg, args.out, args.overwrite, resume=args.resume,
                                 report=report, estimate=not args.no_estimate,
                                 choices=rows).plan_only(), indent=1))
        return 0
    if args.num_processes is not None:
        from ..training.launch import launch
        from ..training.setup import fsdp_refusal, training_on_cpu

        # user errors: one line here, not one per process
        Trainer(cfg, args.out, args.overwrite, resume=args.resume,  # the scan made above
                report=report).check(args.num_processes)
        if cfg.training.fsdp and training_on_cpu(cfg.training):
            raise fsdp_refusal("on CPU", args.num_processes)
        return launch(args.argv, args.num_processes, cfg.training.mixed_precision)
    out = Trainer(cfg, args.out, args.overwrite, resume=args.resume, report=report,
                  estimate=not args.no_estimate, choices=rows).run()
    if os.environ.get("RANK", "0") == "0":  # under accelerate launch: the main process says it
        print(f"trained run written to {out}")
    return 0
