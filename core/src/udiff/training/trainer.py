"""The one training loop every backbone goes through (accelerate), read top to bottom in
:meth:`Trainer.train`. Each concern has its own object or module: the checks before anything is
written and the latent source (:mod:`.preflight`, :mod:`.sources`), accelerate (:mod:`.setup`),
what a stage may use (:class:`~.services.Services`), where the run starts and when it saves
(:mod:`.checkpointing`), the two stages (:mod:`.stages`), the step (:mod:`.step`)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import nn

from ..config import TrainConfig, to_toml
from ..evaluation.curves import training_curves
from ..plugins.assembly import assemble
from ..run.checkpoint_files import CheckpointFiles
from ..run.directory import load_component, save_adapter, save_component
from ..run.files import atomic_write, write_json
from ..run.layout import ADAPTER, CONFIG, CURVES, LOG, RUN_FILE
from ..run.lock import RunLock
from ..sampling import Pipeline
from ..sampling.spec import run_spec
from ..version import __version__
from ..weights import lora, quantize, sharding
from . import planning, preflight, stages
from .checkpoint_policy import CheckpointPolicy
from .estimate import estimate
from .preflight import Plan
from .services import Services
from .setup import make_accelerator, say
from .validation import Validation


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, overwrite: bool = False,
                 progress: bool = True, resume: bool = False, estimate: bool = False,
                 report: dict | None = None, choices: list | None = None) -> None:
        """``estimate``: time a probe of the run's steps first and say how long it will take;
        ``report``: the data's scan, if made; ``choices``: the plan's rows (run.json keeps
        both)."""
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.overwrite, self.resume = overwrite, resume
        self.estimate, self.report, self.choices = estimate, report, choices
        self.estimated: dict | None = None

    def check(self, processes: int = 1) -> Plan:
        """Everything the run can be refused for, before anything is written."""
        return preflight.check(self.cfg, self.out, self.overwrite, self.resume, processes,
                               self.report)

    def run(self) -> Path:
        plan = self.check()  # every refusal is one line, before the plan is shown
        accelerator = make_accelerator(self.cfg, self.out)
        run = Services(self.cfg, self.out, accelerator, CheckpointPolicy(
            self.cfg, self.out, accelerator, self.resume, self.overwrite), self.progress)
        self.out.mkdir(parents=True, exist_ok=True)
        with RunLock(self.out) if run.main else contextlib.nullcontext(), \
                run.checkpointing.catching_signals():
            try:
                self.show_plan(plan, accelerator)  # holding the lock: this run will train
                return self.train(run, plan)
            finally:
                accelerator.end_training()

    def plan_only(self) -> dict:
        """What :meth:`run` shows before training, as data (``udiff train --plan-only``): the
        data's summary, the plan's choices, the timed estimate. Nothing is written."""
        plan = self.check()
        accelerator = make_accelerator(self.cfg.model_copy(update={"training": self.cfg.training
                                       .model_copy(update={"log_with": "none"})}))
        est = estimate(self.cfg, plan, accelerator) if self.estimate else None
        return {"summary": self.report["summary"] if self.report else None,
                "choices": [{"field": f, "value": v, "reason": why}
                            for f, v, why in self.choices or []], "estimate": est}

    def show_plan(self, plan: Plan, accelerator) -> None:
        """The data's summary, the plan's choices and the estimated wall time, in one block."""
        if self.report:
            say(self.report["summary"])
        if self.choices:
            say(f"plan for {self.cfg.data.source} (chosen from the data where you gave no value):")
            for line in planning.table(self.choices):
                say(line)
        if self.estimate and accelerator.num_processes == 1 and not self.resume:
            self.estimated = estimate(self.cfg, plan, accelerator)
            parts = ", ".join(f"{k} {v:.0f} s" for k, v in self.estimated["parts"].items())
            bound = " at most: --early-stop may end sooner" if self.cfg.training.early_stop else ""
            say(f"estimate: {self.estimated['seconds'] / 60:.1f} min on this machine{bound} "
                f"({parts}; from a timed probe of the run's steps)")

    def train(self, run: Services, plan: Plan) -> Path:
        """The loop, top to bottom: where to start, stage 1, stage 2's latents, the stack,
        stage 2, the saved run."""
        cfg, out, ctx, source = self.cfg, self.out, plan.context, plan.source
        checkpoint = run.checkpointing.start()
        if cfg.training.log_with != "none":  # after start(): the tracker creates its folder
            run.accelerator.init_trackers("udiff")
        stage = CheckpointFiles.state(checkpoint)["stage"] if checkpoint else None
        start = time.time()
        if checkpoint is None and run.main:
            atomic_write(out / CONFIG, lambda p: p.write_text(to_toml(cfg)))
        set_seed(cfg.training.seed)

        # stage 1: the autoencoder (finished before a stage-2 checkpoint: saved in the run)
        if stage == "denoiser":
            autoencoder, meta = load_component(out / "autoencoder", "autoencoder", ctx)
        else:
            autoencoder, ae_comp, ae_cfg, scaling = stages.train_autoencoder(
                run, plan, ctx, checkpoint if stage == "autoencoder" else None)

        # stage 2's latents, from the source preflight chose (cached once, by the main process)
        if stage == "denoiser":
            scaling, tensors = meta["scaling_factor"], source.read(out)
        else:
            scaling, tensors, autoencoder = stages.cache_latents(run, source, autoencoder,
                                                                 ae_comp, ae_cfg, scaling)
        # scored as stage 2 and sampling hold it (a frozen one at --base-precision)
        reconstruction = stages.score_autoencoder(run, autoencoder, plan.splits)

        # the stack: the source's starting weights (or fresh ones), LoRA adapters on top
        set_seed(cfg.training.seed + 1)
        init, lo = source.initial(), cfg.denoiser.lora
        # the frozen base stored at --base-precision (on the CPU: the device only ever sees it
        # so), then fp32 adapters on top
        adapted = (lambda m: lora.add(quantize.freeze_base(m, cfg.training.base_precision),
                                      lo.rank, lo.alpha,
                                      lora.targets(plan.denoiser.component, lo.targets))
                   ) if lo else (lambda m: m)
        initial = (lambda _: init["module"]) if init else plan.denoiser.build
        stack = assemble(ctx, lambda c: adapted(initial(c)), plan.conditioner.build,
                         plan.scheduler.build, autoencoder=autoencoder)
        self.reuse_label_table(init, stack.conditioner)
        if init and init.get("conditioner_state"):  # udiff distill: the teacher's
            stack.conditioner.load_state_dict(init["conditioner_state"])
        stack.scheduler = source.scheduler(stack.scheduler, stack.context)

        # stage 2: the denoiser, validated on held-out images as it trains
        validation = None
        # Sharded modules can only sample in lock-step on every process; whole ones on the main.
        if cfg.training.validate_every and (run.main or cfg.training.fsdp):
            validation = Validation(cfg, out, run.log, run.accelerator, plan.splits, Pipeline(
                autoencoder, stack.denoiser, stack.conditioner, plan.scheduler.component.name,
                plan.scheduler.config, plan.data.label_names, scaling, stack.context,
                freeze=False, sampling=run_spec(cfg)), stack.scheduler)
        comp = plan.denoiser.component
        stage2 = stages.train_denoiser(
            run, stack, f"denoiser {comp.name!r} from plugin {comp.plugin}", tensors,
            checkpoint if stage == "denoiser" else None, validation)

        # the run: whole modules (a sharded run gathers them), saved by the main process
        denoiser, conditioner = stack.denoiser, stack.conditioner
        if sharding.is_sharded(denoiser):
            denoiser = sharding.plain_copy(
                denoiser, lambda: adapted(plan.denoiser.build(stack.denoiser_context)), run.main)
            conditioner = sharding.plain_copy(
                conditioner, lambda: plan.conditioner.build(stack.context), run.main)
        if run.main:
            self.save(run, plan, stack, denoiser, conditioner, {
                "wall_seconds": time.time() - start, "autoencoder": reconstruction} | stage2)
        run.accelerator.wait_for_everyone()
        return out

    def save(self, run: Services, plan: Plan, stack, denoiser: nn.Module,
             conditioner: nn.Module, results: dict) -> None:
        """The finished run (main process): components, then run.json last."""
        out = self.out
        self.save_denoiser(plan, denoiser)
        save_component(out / "conditioner", plan.conditioner.component, plan.conditioner.config,
                       conditioner, labels=plan.data.label_names)
        save_component(out / "scheduler", plan.scheduler.component, plan.scheduler.config, None)
        write_json(out / RUN_FILE, {
            "udiff_version": __version__, "labels": plan.data.label_names,
            "context": stack.context.__dict__ | {"cond_dim": 0, "pooled_dim": 0},
            "wall_seconds": results["wall_seconds"], "autoencoder": results["autoencoder"],
            "parameters": results["parameters"],
            "steps": {"autoencoder": self.cfg.training.autoencoder_steps,
                      "denoiser": results["steps"]},  # --resume compares (train longer)
            "holdout": {"images": 0 if plan.splits.held is None else len(plan.splits.held),
                        "fraction": self.cfg.training.holdout},
            "early_stop": results["early_stop"], "timing": results["timing"],
            "plan": self.plan_record(results["wall_seconds"]),
            "processes": run.accelerator.num_processes,
            "distributed_type": run.accelerator.distributed_type.value,
        })
        training_curves(out / LOG, out / CURVES)

    def plan_record(self, wall: float) -> dict | None:
        """What the plan chose and estimated, against the time the run took."""
        if self.estimated is None and not self.choices:
            return None
        record = {"choices": [{"field": f, "value": v, "reason": why}
                              for f, v, why in self.choices or []], "estimate": self.estimated}
        if self.estimated:
            error = wall / self.estimated["seconds"] - 1
            record |= {"actual_seconds": round(wall, 1), "estimate_error": round(error, 3)}
            say(f"took {wall / 60:.1f} min; estimated {self.estimated['seconds'] / 60:.1f} min "
                f"({error:+.0%})")
        return record

    @staticmethod
    def reuse_label_table(init: dict | None, conditioner: nn.Module) -> None:
        """A pretrained class-embedding table (DiT's) seeds the label conditioner when the label
        count and width match; otherwise the conditioner starts fresh."""
        table = init and init.get("label_table")
        if table is None:
            return
        own = getattr(getattr(conditioner, "embedding", None), "weight", None)
        if own is not None and own.shape == table.shape:
            with torch.no_grad():
                own.copy_(table)
            say(f"label table reused from --init-from ({table.shape[0] - 1} labels + null)")
        else:
            say(f"label table of --init-from not reused: {tuple(table.shape)} vs "
                f"{tuple(own.shape) if own is not None else 'no table'} (labels differ)")

    def save_denoiser(self, plan: Plan, denoiser: nn.Module) -> None:
        den, folder = self.cfg.denoiser, self.out / "denoiser"
        comp, config = plan.denoiser.component, plan.denoiser.config
        extra = {"preset": den.preset, "ema": self.cfg.training.ema_decay > 0,
                 "init_from": str(Path(den.init_from).resolve()) if den.init_from else None}
        if not den.lora:
            return save_component(folder, comp, config, denoiser, **extra)
        extra["lora"] = den.lora.model_dump() | {
            "modules": lora.targets(comp, den.lora.targets),
            "base": {"path": extra["init_from"], "sha256": lora.fingerprint(den.init_from)},
            "base_precision": self.cfg.training.base_precision}
        size = save_adapter(denoiser, folder)
        save_component(folder, comp, config, None, **extra)
        say(f"LoRA adapter: {size / 1e6:.2f} MB in {folder / ADAPTER}")


def train(cfg: TrainConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
          resume: bool = False) -> Path:
    return Trainer(cfg, out, overwrite, progress, resume).run()
