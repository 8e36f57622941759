"""``udiff distill``: a trained run (the teacher) into a student that samples in 1-4 steps."""

from __future__ import annotations

NAME = "distill"
HELP = "distil a trained run into a few-step student run (work in progress)"


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="the teacher: a trained run directory")
    p.add_argument("--steps", type=int, default=4, metavar="K",
                   help="sampling steps of the student, 1-8 (default: 4)")
    p.add_argument("--guidance", type=float, metavar="G", help="the teacher's guidance to "
                   "distil in (default: the teacher's chosen sampling, else its family's)")
    p.add_argument("--max-steps", type=int, metavar="N", help="student optimizer steps "
                   "(default: 400)")
    p.add_argument("--lora-rank", type=int, metavar="R",
                   help="train LoRA adapters of rank R on the teacher instead of every weight")
    p.add_argument("--pairs", type=int, default=1024, metavar="N",
                   help="teacher samples to learn from (default: 1024)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the student run to write")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--resume", action="store_true",
                   help="continue the student in --out from its newest complete checkpoint")


def main(args) -> int:
    from ..errors import UdiffError
    from ..training import train
    from ..training.distill import student_config

    if args.resume and args.overwrite:
        raise UdiffError("--resume continues what --out holds; --overwrite would replace it: "
                         "choose one")
    if not 1 <= args.steps <= 8:
        raise UdiffError(f"--steps {args.steps}: the student samples in 1 to 8 steps")
    cfg = student_config(args.run_dir, args.steps, args.guidance, args.max_steps,
                         args.lora_rank, args.pairs)
    out = train(cfg, args.out, overwrite=args.overwrite, resume=args.resume)
    print(f"student run written to {out} (sample it in {args.steps} steps: udiff sample {out})")
    return 0
