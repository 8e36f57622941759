"""``udiff distill``: a trained run (the teacher) into a student run that samples in 1-8 steps
(method: ``udiff.training.distill``). The student's config comes from the teacher's; its
training flags are generated like ``udiff train``'s (:mod:`.flags`)."""

from __future__ import annotations

from ..errors import UdiffError
from . import flags

NAME = "distill"
HELP = "distil a trained run into a student that samples in 1-8 steps"


def add_arguments(p) -> None:
    from ..config import DISTILL_TRAINING, DistillConfig

    p.add_argument("run_dir", help="the teacher: a trained run directory")
    p.add_argument("--steps", type=int, default=4, metavar="K",
                   help="sampling steps of the student, 1-8; it also samples in fewer steps "
                   "that divide its schedule (default: 4)")
    p.add_argument("--guidance", type=float, metavar="G", help="the teacher's guidance scale, "
                   "distilled in (default: the teacher's chosen sampling, else its family's)")
    p.add_argument("--pairs", type=int, metavar="N", help="guided teacher samples the student "
                   f"learns from (default: {DistillConfig.model_fields['pairs'].default})")
    flags.add(p, flags.DISTILL_FLAGS, {"training": DISTILL_TRAINING})
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the student run to write")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--resume", action="store_true",
                   help="continue the student in --out from its newest complete checkpoint")


def main(args) -> int:
    from ..training import train
    from ..training.distill import student_config

    if args.resume and args.overwrite:
        raise UdiffError("--resume continues what --out holds; --overwrite would replace it: "
                         "choose one")
    if not 1 <= args.steps <= 8:
        raise UdiffError(f"--steps {args.steps}: the student samples in 1 to 8 steps")
    cfg = student_config(args.run_dir, args.steps, args.guidance, args.pairs,
                         flags.overrides(args, flags.DISTILL_FLAGS))
    out = train(cfg, args.out, overwrite=args.overwrite, resume=args.resume)
    print(f"student run written to {out} (samples in {args.steps} steps: udiff sample {out} "
          "--out samples.png)")
    return 0
