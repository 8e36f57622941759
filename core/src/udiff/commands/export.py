"""``udiff export``: a run as folders stock diffusers loads."""

from __future__ import annotations

NAME = "export"
HELP = "write a run in another library's format"


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a trained run directory")
    p.add_argument("--format", choices=["diffusers"], default="diffusers",
                   help="the format to write (default: diffusers)")
    p.add_argument("--scheduler", metavar="NAME",
                   help="sampler to export (default: the training scheduler)")
    p.add_argument("--merge-lora", action="store_true",
                   help="fold a LoRA run's adapter into its base weights")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")


def main(args) -> int:
    from ..sampling.export import export_diffusers

    out = export_diffusers(args.run_dir, args.out, args.scheduler, args.overwrite, args.merge_lora)
    print(f"exported {args.run_dir} as {args.format} to {out}")
    return 0
