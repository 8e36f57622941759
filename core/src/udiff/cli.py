"""The ``udiff`` command. User errors print one line and exit 2; Ctrl-C exits 130."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .errors import UdiffError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        raise UdiffError(f"{self.prog}: {message}")


def cmd_plugins(args) -> int:
    from .plugins import registry

    reg = registry()
    records = reg.plugins(include_builtins=args.all)
    if args.json:
        def formats(record):  # what --init-from reads, per denoiser of this plugin
            return {c.name: list(c.meta["init_formats"]) for c in reg.components["denoiser"].values()
                    if c.plugin == record.name and c.meta.get("init_formats")}
        print(json.dumps([r.as_json() | {"init_formats": formats(r)} for r in records], indent=2))
        return 0
    for r in records:
        provides = "; ".join(f"{role}: {', '.join(n)}" for role, n in r.provides.items())
        status = f"ERROR {r.error}" if r.error else provides
        print(f"{r.name} {r.version or ''}  {status}")
    if not records:
        print("no plugins installed (udiff plugins --all shows the built-ins)")
    return 0


def overrides_from(args) -> dict[str, Any]:
    """Only the flags the user gave; they win over the config file."""
    o: dict[str, Any] = {}

    def put(section: str, key: str, value):
        if value is not None:
            o.setdefault(section, {})[key] = value

    put("data", "source", getattr(args, "data", None))
    put("data", "image_size", getattr(args, "image_size", None))
    if args.backbone:
        o["denoiser"] = {"name": args.backbone, "preset": args.preset}
    elif args.preset:
        put("denoiser", "preset", args.preset)
    if args.scheduler:
        o["scheduler"] = {"name": args.scheduler}
    put("autoencoder", "preset", getattr(args, "autoencoder_preset", None))
    put("autoencoder", "from_run", getattr(args, "autoencoder", None))
    put("autoencoder", "pretrained", getattr(args, "autoencoder_from", None))
    put("denoiser", "init_from", getattr(args, "init_from", None))
    if getattr(args, "lora_rank", None) is not None:
        lora: dict[str, Any] = {"rank": args.lora_rank}
        if args.lora_targets:
            lora["targets"] = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
        o.setdefault("denoiser", {})["lora"] = lora
    for flag in ("max_steps", "autoencoder_steps", "seed", "batch_size", "lr", "mixed_precision",
                 "attention", "device", "checkpoint_every", "keep_checkpoints", "max_nonfinite",
                 "validate_every", "log_with"):
        put("training", flag, getattr(args, flag, None))
    for flag in ("gradient_checkpointing", "compile", "fsdp"):
        if getattr(args, flag, False):
            put("training", flag, True)
    return o


def resolve_config(args, defaults: dict | None = None):
    from .config import read_file, resolve

    o = overrides_from(args)
    if args.config and "denoiser" in o:
        # Switching backbone keeps the file's other lines but not the old backbone's options.
        file_den = read_file(args.config).get("denoiser", {})
        if file_den.get("name") not in (None, o["denoiser"].get("name")):
            o["denoiser"].setdefault("options", {})
    return resolve(args.config, o, defaults)


def cmd_train(args) -> int:
    from .training import Trainer, train

    cfg = resolve_config(args)
    if args.resume and args.overwrite:
        raise UdiffError("--resume continues what --out holds; --overwrite would replace it: "
                         "choose one")
    if args.num_processes is not None:
        from .launch import launch

        # user errors: one line here, not one per process
        Trainer(cfg, args.out, args.overwrite, resume=args.resume).check(args.num_processes)
        if cfg.training.fsdp:
            from .training import fsdp_refusal, training_on_cpu

            if training_on_cpu(cfg.training):
                raise fsdp_refusal("on CPU", args.num_processes)
        return launch(args.argv, args.num_processes, cfg.training.mixed_precision)
    out = train(cfg, args.out, overwrite=args.overwrite, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under accelerate launch: the main process says it
        print(f"trained run written to {out}")
    return 0


def cmd_info(args) -> int:
    from .info import describe

    cfg = resolve_config(args, defaults={"data": {"image_size": 256, "channels": 3},
                                         "autoencoder": {"name": "kl", "preset": "sd"}})
    info = describe(cfg, args.labels)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>20}: {v:,}" if isinstance(v, int) else f"{k:>20}: {v}")
    return 0


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


def cmd_sample(args) -> int:
    from pathlib import Path

    from .images import grid
    from .sampling import load

    pipe = load(args.run_dir, device=args.device)
    if args.compile:
        pipe.compile()
    labels = parse_labels(args.labels, pipe.label_names) if args.labels else list(
        range(len(pipe.label_names)))
    images, _ = pipe.sample_tensor(labels, args.per_label, args.steps, args.guidance, args.seed,
                                   args.scheduler, progress=True)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UdiffError(f"--out {out}: must be a .png file")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(images, rows=len(labels)).save(out)
    print(f"wrote {len(images)} samples to {out}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_run

    m, _, _ = evaluate_run(args.run_dir, args.out, args.per_label, args.steps, args.scheduler,
                           args.guidance, args.seed, args.inception_weights)
    print(json.dumps({k: m[k] for k in ("label_accuracy", "reference_accuracy", "fid", "kid",
                                        "fid_features", "diversity", "real_diversity")}))
    print(f"metrics: {args.out}  picture: {args.out[:-5]}.png")
    return 0


def cmd_export(args) -> int:
    from .export import export_diffusers

    out = export_diffusers(args.run_dir, args.out, args.scheduler, args.overwrite, args.merge_lora)
    print(f"exported {args.run_dir} as {args.format} to {out}")
    return 0


def cmd_bench(args) -> int:
    from .bench.run import run

    rat = run(args.out, backbones=args.backbones, preset=args.preset, batches=args.batches,
              quick=args.quick, device=args.device, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in rat.items() if k not in ("details", "targets")}))
    print(f"report: {args.out}/report.md  {args.out}/report.png  {args.out}/ratios.json")
    return 0


def cmd_demo(args) -> int:
    from .demo import run

    m = run(args.backbone, args.out, preset=args.preset, seed=args.seed,
            overwrite=args.overwrite)
    print(json.dumps({k: m[k] for k in ("backbone", "label_accuracy", "reference_accuracy",
                                        "wall_seconds")}))
    print(f"samples: {args.out}/samples.png  metrics: {args.out}/metrics.json")
    return 0


def common_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", help="denoiser name (e.g. unet, dit, flux)")
    p.add_argument("--preset", help="denoiser preset (e.g. tiny, small, sd15)")
    p.add_argument("--scheduler", help="training scheduler/objective (default: the backbone's)")
    p.add_argument("--config", help="TOML or JSON run config; flags override it")
    p.add_argument("--image-size", type=int)
    p.add_argument("--autoencoder-preset")


def build_parser() -> Parser:
    p = Parser(prog="udiff", description="Pluggable latent diffusion.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("plugins", help="list installed plugins")
    s.add_argument("--all", action="store_true", help="include built-ins")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("train", help="train autoencoder + denoiser into a run directory")
    s.add_argument("--data", help="'digits' or a folder with one sub-folder per label")
    common_train_flags(s)
    s.add_argument("--max-steps", type=int, help="denoiser optimizer steps")
    s.add_argument("--autoencoder-steps", type=int, help="stage-1 steps")
    s.add_argument("--autoencoder", metavar="RUN_DIR", help="reuse this run's autoencoder")
    s.add_argument("--autoencoder-from", metavar="PATH", help="a pretrained diffusers "
                   "AutoencoderKL/VQModel folder (e.g. SD's vae/) or .safetensors with "
                   "config.json beside it; frozen, stage 1 skipped")
    s.add_argument("--init-from", metavar="PATH", help="pretrained denoiser weights in a format "
                   "the backbone reads (udiff plugins --json lists them)")
    s.add_argument("--lora-rank", type=int, metavar="R", help="train LoRA adapters of rank R on "
                   "the frozen --init-from base (peft)")
    s.add_argument("--lora-targets", metavar="LIST", help="attention (default), mlp, or module "
                   "names, comma-separated")
    s.add_argument("--batch-size", type=int, help="global batch per optimizer step (split across processes)")
    s.add_argument("--lr", type=float)
    s.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    s.add_argument("--gradient-checkpointing", action="store_true")
    s.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    s.add_argument("--attention", choices=["sdpa", "xformers"])
    s.add_argument("--device", choices=["auto", "cpu", "cuda"])
    s.add_argument("--seed", type=int)
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest complete checkpoint")
    s.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="resumable checkpoint every N steps of each stage (default 500)")
    s.add_argument("--keep-checkpoints", type=int, metavar="K", help="checkpoints kept (default 2)")
    s.add_argument("--max-nonfinite", type=int, metavar="N",
                   help="stop after N consecutive non-finite losses (default 20)")
    s.add_argument("--validate-every", type=int, metavar="N",
                   help="sample a small grid and score its label accuracy every N steps")
    s.add_argument("--log-with", choices=["none", "tensorboard"],
                   help="also log to TensorBoard (<out>/tensorboard)")
    s.add_argument("--num-processes", type=int, metavar="N",
                   help="data-parallel training in N processes: starts `accelerate launch "
                   "--multi_gpu --num_processes N -m udiff train ...` (CPU: gloo, GPU: NCCL)")
    s.add_argument("--fsdp", action="store_true",
                   help="shard the model across the processes (FSDP2) instead of replicating "
                   "it (DDP): for backbones too big for one GPU; needs --num-processes on GPUs")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("info", help="parameters and MACs of a configuration (meta device)")
    common_train_flags(s)
    s.add_argument("--labels", type=int, default=1000, help="number of labels (default 1000)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("sample", help="sample a PNG grid (a row per label) from a run")
    s.add_argument("run_dir")
    s.add_argument("--labels", help="comma-separated indices or names (default: all)")
    s.add_argument("--per-label", type=int, default=8)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--scheduler", help="sampler (default: the training scheduler)")
    s.add_argument("--guidance", type=float, default=3.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    s.add_argument("--out", required=True, help="output .png")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("eval", help="label accuracy, FID/KID, diversity and autoencoder "
                       "PSNR/SSIM of a run")
    s.add_argument("run_dir")
    s.add_argument("--per-label", type=int, default=30, help="samples per label (default 30)")
    s.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    s.add_argument("--scheduler", help="sampler (default: dpm++ for noise runs, flow for flow)")
    s.add_argument("--guidance", type=float, help="CFG scale (default: 6 noise, 2 flow)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--inception-weights", metavar="PATH",
                   help="FID Inception weights (torch-fidelity's file); default: torch.hub's "
                   "cache, else the reference classifier's features")
    s.add_argument("--out", required=True, help="metrics .json (the PNG is written beside it)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("export", help="write a run in another library's format")
    s.add_argument("run_dir")
    s.add_argument("--format", choices=["diffusers"], default="diffusers")
    s.add_argument("--scheduler", help="sampler to export (default: the training scheduler)")
    s.add_argument("--merge-lora", action="store_true",
                   help="fold a LoRA run's adapter into its base weights")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", help="benchmark every installed backbone (pytest-benchmark)")
    s.add_argument("--backbones", help="comma-separated (default: every installed backbone)")
    s.add_argument("--preset", help="preset of every backbone (default: bench; --quick: tiny)")
    s.add_argument("--batches", help="comma-separated batch sizes (default: 16,64; --quick: 8)")
    s.add_argument("--quick", action="store_true", help="tiny presets, few rounds (~2 min CPU)")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--out", required=True, help="folder for bench.json, report.md/png, "
                   "ratios.json")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", help="train, sample and evaluate on the embedded digits")
    s.add_argument("--backbone", default="unet")
    s.add_argument("--preset", default="small")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except UdiffError as e:
        print(f"udiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("udiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
