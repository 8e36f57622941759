"""``udiff eval``: label accuracy, FID/KID, diversity and autoencoder PSNR/SSIM of a run."""

from __future__ import annotations

import json

from .sample import add_sampling, overrides

NAME = "eval"
HELP = "label accuracy, FID/KID, diversity and autoencoder PSNR/SSIM of a run"


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a trained run directory")
    p.add_argument("--per-label", type=int, default=30, help="samples per label (default: 30)")
    add_sampling(p)
    p.add_argument("--inception-weights", metavar="PATH",
                   help="FID Inception weights (torch-fidelity's file); default: torch.hub's "
                   "cache, else the reference classifier's features")
    p.add_argument("--out", required=True, metavar="JSON",
                   help="metrics .json (the PNG is written beside it)")


def main(args) -> int:
    from ..evaluation.evaluate import evaluate_run

    m, _, _ = evaluate_run(args.run_dir, args.out, args.per_label, args.inception_weights,
                           **overrides(args))
    copies = {f"near_copies_{space}": m["memorization"][space]["near_copy_share"]
              for space in ("features", "pixels")}
    print(json.dumps({k: m[k] for k in ("label_accuracy", "reference_accuracy", "fid", "kid",
                                        "fid_features", "diversity", "real_diversity")} | copies))
    print(f"metrics: {args.out}  pictures: {args.out[:-5]}.png {args.out[:-5]}-memorization.png")
    return 0
