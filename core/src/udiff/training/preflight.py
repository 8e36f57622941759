"""Everything a run can be refused for, checked before anything is written: every component and
its options, optional back-ends, the data, batch sizes, pretrained weights, and one forward of the
assembled stack on the meta device (a factory that raises or a prediction of the wrong shape is
one line naming the plugin, not a traceback after stage 1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import data as datasets
from ..config import TrainConfig
from ..context import Context
from ..data_report import FEW_IMAGES, scan
from ..errors import UdiffError
from ..plugins.assembly import Part, assemble, scheduler_choice
from ..run.directory import component_of, load_component
from ..run.files import prepare_out
from ..weights import lora, pretrained, quantize
from . import optimizers
from .checkpoint_policy import refuse_stopped
from .objective import check_prediction
from .setup import check_batches, require_attention, require_tracker, say
from .sources import choose


@dataclass
class Plan:
    """What the checks resolved, for the run to use as is."""

    data: datasets.LabelledImages
    context: Context  # images and labels known; latents not yet
    autoencoder: Part | None  # to build (None: from another run or pretrained)
    denoiser: Part  # the config it is built with (an --init-from's own options)
    conditioner: Part
    scheduler: Part
    # another run's (--autoencoder-from-run) or a pretrained autoencoder, read once here:
    # (component, config, module, scaling factor)
    given_autoencoder: tuple | None = None
    source: Any = None  # stage 2's latents: sources.DataLatents or sources.TeacherPairs
    splits: datasets.Splits | None = None  # who trains on which image (validation's held-out)
    report: dict | None = None  # a folder's `udiff data` report


def check(cfg: TrainConfig, out: Path, overwrite: bool, resume: bool, processes: int = 1,
          report: dict | None = None) -> Plan:
    """``report``: ``udiff data``'s scan of a folder source, if the caller made it already."""
    parts = {role: Part.of(role, getattr(cfg, role))
             for role in ("autoencoder", "denoiser", "conditioner")}
    scheduler = Part.of("scheduler", scheduler_choice(cfg))
    require_attention(cfg.training.attention)
    require_tracker(cfg.training.log_with)
    data = datasets.load(cfg.data.source, cfg.data.image_size, cfg.data.channels)
    if cfg.data.source != "digits" and report is None:  # udiff data's checks, in one line
        report = scan(cfg.data.source, f"--data {cfg.data.source}", strict=True)
        say(report["summary"])
    check_batches(cfg.training, processes)
    check_validation(cfg.training)
    check_memory_options(cfg)
    ctx = Context(image_channels=data.images.shape[1], image_size=cfg.data.image_size,
                  num_labels=len(data.label_names))
    plan = Plan(data, ctx, parts["autoencoder"], parts["denoiser"], parts["conditioner"], scheduler,
                splits=held_out(cfg, data), report=report)
    read_pretrained(cfg, plan)
    probe(cfg, plan)
    if out.exists() and not out.is_dir():
        raise UdiffError(f"--out {out} exists and is not a directory")
    if resume:
        refuse_stopped(out)
    else:
        prepare_out(out, overwrite, clear=False)
    warn_few_images(data)  # once nothing refused the run
    return plan


def check_validation(t) -> None:
    if t.early_stop and not t.validate_every:
        raise UdiffError("--early-stop needs validation to watch: give --validate-every N")
    if t.early_stop and t.fsdp:
        raise UdiffError("--early-stop keeps the best validated weights whole, which a sharded "
                         "(--fsdp) run does not hold: train with DDP (without --fsdp)")
    if t.early_stop and t.holdout == 0 and t.early_stop_metric != "accuracy":
        raise UdiffError(f"--early-stop-metric {t.early_stop_metric} is measured on held-out "
                         "images: give --holdout above 0 (or watch accuracy)")


def check_memory_options(cfg: TrainConfig) -> None:
    """--optimizer and --base-precision: their library installed, and a base to store."""
    t = cfg.training
    optimizers.require(t.optimizer)
    if t.optimizer != "adamw" and t.fsdp:
        raise UdiffError(f"--optimizer {t.optimizer} does not shard its 8-bit state: with "
                         "--fsdp use --optimizer adamw")
    if t.base_precision != "fp32":
        if not cfg.denoiser.lora and not frozen_autoencoder(cfg):
            raise UdiffError(f"--base-precision {t.base_precision} stores frozen weights: it "
                             "needs a LoRA run (--lora-rank R --init-from PATH) or a frozen "
                             "--autoencoder-from autoencoder; a full fine-tune trains every "
                             "weight in fp32")
        if t.base_precision == "bf16" and cfg.denoiser.lora and t.mixed_precision != "bf16":
            raise UdiffError("--base-precision bf16 computes the base in bf16: add "
                             "--mixed-precision bf16")
        if t.fsdp:
            raise UdiffError(f"--base-precision {t.base_precision} with --fsdp: FSDP shards "
                             "fp32 weights; train the quantized base with DDP")
        quantize.require(t.base_precision)


def frozen_autoencoder(cfg: TrainConfig) -> bool:
    """A given autoencoder (pretrained or another run's) that stage 1 does not fine-tune: it is
    stored at --base-precision after encoding the latents."""
    a = cfg.autoencoder
    return bool(a.pretrained or a.from_run) and not a.finetune


def held_out(cfg: TrainConfig, data: datasets.LabelledImages) -> datasets.Splits:
    """The run's splits; a label left with no training image is refused."""
    t = cfg.training
    splits = datasets.splits(data, t.holdout, t.autoencoder_holdout, t.splits_seed)
    kept = torch.bincount(splits.train.labels, minlength=len(data.label_names))  # [K]
    empty = [data.label_names[k] for k, n in enumerate(kept) if n == 0]
    if empty:
        raise UdiffError(f"--holdout {t.holdout} leaves label {empty[0]!r} with no training image "
                         f"(every label keeps at least one image out): add images or give "
                         "--holdout 0")
    return splits


def warn_few_images(data: datasets.LabelledImages) -> None:
    counts = torch.bincount(data.labels, minlength=len(data.label_names))  # [K]
    few = [f"{data.label_names[k]} ({int(n)})" for k, n in enumerate(counts) if n < FEW_IMAGES]
    if few:
        more = f" and {len(few) - 5} more" if len(few) > 5 else ""
        say(f"warning: {len(few)} label(s) have fewer than {FEW_IMAGES} images: "
            f"{', '.join(few[:5])}{more}; samples may copy training images: check `udiff eval`'s "
            "memorization (docs/evaluation.md, Memorisation)")


def read_pretrained(cfg: TrainConfig, plan: Plan) -> None:
    """Read the given autoencoder, --init-from and a student's teacher now (each once), so a
    wrong path, architecture, pickle or shape fails before --out is touched; then choose stage
    2's latent source."""
    ctx, choice = plan.context, cfg.autoencoder
    plan.source = choose(cfg, plan.splits.train)  # a student's teacher is loaded here, once
    if choice.pretrained:
        plan.given_autoencoder = pretrained.autoencoder(choice.pretrained, ctx)
    elif choice.from_run:
        folder = Path(choice.from_run) / "autoencoder"
        comp, config, meta = component_of(folder, "autoencoder")
        module = plan.source.loaded_autoencoder(choice.from_run)  # the teacher's, if it is
        if module is None or quantize.reduced(module):  # this run stores its own precision
            module, _ = load_component(folder, "autoencoder", ctx, base_precision="fp32")
        plan.given_autoencoder = (comp, config, module, meta["scaling_factor"])
    den = cfg.denoiser
    if den.lora and not den.init_from:
        raise UdiffError("LoRA trains adapters on a pretrained base: give --init-from")
    if den.lora:
        lora.require()
    if den.init_from and plan.source.reads_init_from:  # a student's is its teacher's folder
        plan.source.init = read_init_from(cfg, plan)
    if den.lora:  # unknown groups or names: one line now, not after the first stage
        lora.check_targets(plan.source.module, lora.targets(plan.denoiser.component,
                                                            den.lora.targets))


def read_init_from(cfg: TrainConfig, plan: Plan) -> dict[str, Any]:
    """--init-from: the weights read into the backbone they describe."""
    ctx, den = plan.context, cfg.denoiser
    ae = plan.given_autoencoder[2] if plan.given_autoencoder else plan.autoencoder.build(ctx)
    ctx = ctx.with_latents(ae)
    comp = plan.denoiser.component
    read = pretrained.denoiser_state(comp, den.init_from, plan.denoiser.config, ctx)
    plan.denoiser = Part(comp, comp.make_config(options=read["options"]))
    module = plan.denoiser.build(ctx)
    pretrained.load_strict(module, read["state"], Path(den.init_from))
    return {"module": module, "label_table": read.get("label_table")}


def latent_context(cfg: TrainConfig, plan: Plan) -> Context:
    """The latent shape, from the given autoencoder or one built on the meta device."""
    if plan.given_autoencoder:
        return plan.context.with_latents(plan.given_autoencoder[2])
    return plan.context.with_latents(plan.autoencoder.build(plan.context))


def probe(cfg: TrainConfig, plan: Plan) -> None:
    """Build the stack and run one batch-2 forward on the meta device (no memory, no compute),
    falling back to the CPU for a backbone that cannot run on meta."""
    comp = plan.denoiser.component
    name = f"denoiser {comp.name!r} from plugin {comp.plugin}"
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                stack = assemble(latent_context(cfg, plan), plan.denoiser.build,
                                 plan.conditioner.build)
                c, s = stack.context.latent_channels, stack.context.latent_size
                x = torch.zeros(2, c, s, s)
                labels = torch.zeros(2, dtype=torch.long)
                out = stack.denoiser(x, torch.zeros(2, dtype=torch.long),
                                     stack.conditioner(labels))
        except Exception as e:
            if device == "meta":
                continue  # e.g. .item() on a meta tensor: try for real
            if isinstance(e, UdiffError):
                raise
            raise UdiffError(f"{name}: forward raised {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]}") from None
        check_prediction(out, x, name)
        return
