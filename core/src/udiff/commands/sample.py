"""``udiff sample``: a PNG grid, a row per label, from a trained run."""

from __future__ import annotations

from ..config import SamplingConfig
from ..errors import UdiffError

NAME = "sample"
HELP = "sample a PNG grid (a row per label) from a run"


def add_sampling(p) -> None:
    """--steps, --scheduler, --guidance, --seed, the guidance options; help read from
    :class:`SamplingConfig`; the defaults are the run's own (``sampling.spec.run_spec``)."""
    from ..sampling.spec import SAMPLERS

    fields = SamplingConfig.model_fields
    about = {k: fields[k].description.rstrip(".") for k in ("steps", "guidance")}
    own = ("the run's [sampling], else its family's: "
           + "; ".join(f"{f}: {d['scheduler']} at CFG {d['guidance']:g}"
                       for f, d in SAMPLERS.items()))
    p.add_argument("--steps", type=int, metavar="N",
                   help=f"{about['steps']} (default: the run config's)")
    p.add_argument("--scheduler", metavar="NAME", help="sampler, of the objective family the run "
                   f"trained with (default: {own})")
    p.add_argument("--guidance", type=float, metavar="X",
                   help=f"{about['guidance']} (default: the run's, as --scheduler)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the initial noise (default: 0)")
    more = {k: fields[k].description.rstrip(".") for k in ("guidance_interval",
                                                             "guidance_rescale")}
    p.add_argument("--guidance-interval", metavar="LO,HI",
                   help=f"{more['guidance_interval']} (default: the run's, else its family's; "
                   "0,1 = everywhere)")
    p.add_argument("--guidance-rescale", type=float, metavar="X",
                   help=f"{more['guidance_rescale']} (default: the run's, else 0)")


def overrides(args) -> dict:
    """The sampling flags as :class:`~udiff.sampling.spec.SamplingSpec` fields (``None``: the
    run's own), checked: a bad value is one line naming its flag."""
    from ..sampling.guidance import parse_interval

    try:
        interval = parse_interval(args.guidance_interval)
    except ValueError as e:
        raise UdiffError(f"--guidance-interval {args.guidance_interval}: LO,HI with "
                         f"0 <= LO <= HI <= 1 ({e})") from None
    if args.guidance_rescale is not None and not 0 <= args.guidance_rescale <= 1:
        raise UdiffError(f"--guidance-rescale {args.guidance_rescale}: must be in [0, 1]")
    return {"sampler": args.scheduler, "steps": args.steps, "guidance": args.guidance,
            "interval": interval, "rescale": args.guidance_rescale, "seed": args.seed}


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a trained run directory")
    p.add_argument("--labels", help="comma-separated indices or names (default: all)")
    p.add_argument("--per-label", type=int, default=8, help="images per label (default: 8)")
    add_sampling(p)
    p.add_argument("--device", default="cpu", help="torch device to sample on (default: cpu)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    p.add_argument("--out", required=True, metavar="PNG", help="output .png")


def parse_labels(text: str, names: list[str]) -> list[int]:
    out = []
    for tok in (t.strip() for t in text.split(",") if t.strip()):
        if tok.lstrip("-").isdigit():
            out.append(int(tok))
        elif tok in names:
            out.append(names.index(tok))
        else:
            raise UdiffError(f"--labels: {tok!r} is neither a label index nor a label name")
    if not out:
        raise UdiffError("--labels: give at least one label, e.g. --labels 0,3")
    return out


def main(args) -> int:
    from pathlib import Path

    from ..images import grid
    from ..sampling import load

    options = overrides(args)
    pipe = load(args.run_dir, device=args.device)
    if args.compile:
        pipe.compile()
    labels = parse_labels(args.labels, pipe.label_names) if args.labels else list(
        range(len(pipe.label_names)))
    images, _ = pipe.sample_tensor(labels, args.per_label, pipe.spec(**options), progress=True)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UdiffError(f"--out {out}: must be a .png file")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(images, rows=len(labels)).save(out)
    print(f"wrote {len(images)} samples to {out}")
    return 0
