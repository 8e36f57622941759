"""The one training loop every backbone goes through (accelerate), read top to bottom in
:meth:`Trainer.run`. Each concern has its own object or module: the checks before anything is
written (:mod:`.preflight`), accelerate (:mod:`.setup`), where the run starts and when it saves
(:mod:`.checkpointing`), the two stages (:mod:`.stages`), the step (:mod:`.step`)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from ..config import TrainConfig, to_toml
from ..evaluation.curves import training_curves
from ..plugins import defaults
from ..plugins.assembly import assemble
from ..run.checkpoints import Checkpointer
from ..run.directory import load_component, save_adapter, save_component
from ..run.files import atomic_write, write_json
from ..run.layout import ADAPTER, CONFIG, CURVES, LOG, RUN_FILE
from ..run.lock import RunLock
from ..sampling import Pipeline
from ..version import __version__
from ..weights import lora, sharding
from . import distill, preflight, stages
from .checkpointing import Checkpointing
from .preflight import Plan
from .setup import make_accelerator, say
from .validation import Validation


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, overwrite: bool = False,
                 progress: bool = True, resume: bool = False) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.overwrite, self.resume = overwrite, resume
        self.log_path = self.out / LOG
        self.reconstruction: dict | None = None  # stage 1's PSNR/SSIM, for run.json
        self.parameters: dict | None = None  # stage 2's trainable and total counts, for run.json
        self.accelerator = self.checkpointing = None  # set by run()

    # -- services the stages use ------------------------------------------------------------
    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, **row) -> None:
        """One JSONL row; with a tracker, its numbers too (as ``stage/key`` at the row's step)."""
        if self.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.cfg.training.log_with != "none":
            self.accelerator.log({f"{row['stage']}/{k}": v for k, v in row.items()
                                  if k not in ("stage", "step") and type(v) in (int, float)},
                                 step=row["step"])

    def bar(self, total: int, desc: str, initial: int = 0):
        return tqdm(total=total, initial=initial, desc=desc,
                    disable=not (self.progress and self.main))

    # -- the run ---------------------------------------------------------------------------
    def check(self, processes: int = 1) -> Plan:
        """Everything the run can be refused for, before anything is written."""
        return preflight.check(self.cfg, self.out, self.overwrite, self.resume, processes)

    def run(self) -> Path:
        plan = self.check()
        self.accelerator = make_accelerator(self.cfg, self.out)
        self.checkpointing = Checkpointing(self.cfg, self.out, self.accelerator, self.resume,
                                           self.overwrite)
        self.out.mkdir(parents=True, exist_ok=True)
        with RunLock(self.out) if self.main else contextlib.nullcontext(), \
                self.checkpointing.catching_signals():
            try:
                return self._run(plan)
            finally:
                self.accelerator.end_training()

    def _run(self, plan: Plan) -> Path:
        cfg, out = self.cfg, self.out
        checkpoint = self.checkpointing.start()
        if cfg.training.log_with != "none":  # after start(): the tracker creates its folder
            self.accelerator.init_trackers("udiff")
        stage = Checkpointer.state(checkpoint)["stage"] if checkpoint else None
        start = time.time()
        if checkpoint is None and self.main:
            atomic_write(out / CONFIG, lambda p: p.write_text(to_toml(cfg)))
        set_seed(cfg.training.seed)
        ctx = plan.context
        if stage == "denoiser":  # stage 1 finished before the checkpoint: its results are saved
            autoencoder, meta = load_component(out / "autoencoder", "autoencoder", ctx)
            latents, labels = stages.read_latents(out)
            scaling = meta["scaling_factor"]
            stages.score_autoencoder(self, autoencoder, plan.data)
        else:
            autoencoder, ae_comp, ae_cfg, scaling = stages.train_autoencoder(
                self, plan, ctx, checkpoint if stage == "autoencoder" else None)
            latents, labels, scaling = stages.cache_latents(self, plan, autoencoder, ae_comp,
                                                            ae_cfg, scaling)
        noise = None
        if cfg.distill:  # the teacher's guided samples and their noise replace the data
            latents, labels, noise = distill.pairs(self, cfg)

        set_seed(cfg.training.seed + 1)
        lo = cfg.denoiser.lora
        adapted = (lambda m: lora.add(m, lo.rank, lo.alpha,
                                      lora.targets(plan.denoiser.component, lo.targets))
                   ) if lo else (lambda m: m)
        initial = (lambda _: plan.init["module"]) if plan.init else plan.denoiser.build
        stack = assemble(ctx, lambda c: adapted(initial(c)), plan.conditioner.build,
                         plan.scheduler.build, autoencoder=autoencoder)
        self.reuse_label_table(plan, stack.conditioner)
        if plan.init and plan.init.get("conditioner_state"):  # udiff distill: the teacher's
            stack.conditioner.load_state_dict(plan.init["conditioner_state"])
        if cfg.distill:
            stack.scheduler = distill.training_scheduler(stack.scheduler, stack.context, cfg)
        validation = None
        # Sharded modules can only sample in lock-step on every process; whole ones on the main.
        if cfg.training.validate_every and (self.main or cfg.training.fsdp):
            validation = Validation(cfg, out, self.log, self.accelerator, plan.data, Pipeline(
                autoencoder, stack.denoiser, stack.conditioner, plan.scheduler.component.name,
                plan.scheduler.config, plan.data.label_names, scaling, stack.context,
                freeze=False, sampling=defaults.run_sampling(cfg)))
        comp = plan.denoiser.component
        self.parameters = stages.train_denoiser(
            self, stack, f"denoiser {comp.name!r} from plugin {comp.plugin}", latents, labels,
            checkpoint if stage == "denoiser" else None, validation, noise)
        denoiser, conditioner = stack.denoiser, stack.conditioner
        if sharding.is_sharded(denoiser):  # whole modules for the main process to save
            denoiser = sharding.plain_copy(
                denoiser, lambda: adapted(plan.denoiser.build(stack.denoiser_context)), self.main)
            conditioner = sharding.plain_copy(
                conditioner, lambda: plan.conditioner.build(stack.context), self.main)
        if self.main:
            self.save(plan, stack, denoiser, conditioner, time.time() - start)
        self.accelerator.wait_for_everyone()
        return out

    def save(self, plan: Plan, stack, denoiser: nn.Module, conditioner: nn.Module,
             seconds: float) -> None:
        """The finished run (main process): components, then run.json last."""
        out = self.out
        self.save_denoiser(plan, denoiser)
        save_component(out / "conditioner", plan.conditioner.component, plan.conditioner.config,
                       conditioner, labels=plan.data.label_names)
        save_component(out / "scheduler", plan.scheduler.component, plan.scheduler.config, None)
        write_json(out / RUN_FILE, {
            "udiff_version": __version__, "labels": plan.data.label_names,
            "context": stack.context.__dict__ | {"cond_dim": 0, "pooled_dim": 0},
            "wall_seconds": seconds, "autoencoder": self.reconstruction,
            "parameters": self.parameters,
            "steps": {"autoencoder": self.cfg.training.autoencoder_steps,
                      "denoiser": self.cfg.training.max_steps},  # --resume compares (train longer)
            "processes": self.accelerator.num_processes,
            "distributed_type": self.accelerator.distributed_type.value,
        })
        training_curves(self.log_path, out / CURVES)

    def reuse_label_table(self, plan: Plan, conditioner: nn.Module) -> None:
        """A pretrained class-embedding table (DiT's) seeds the label conditioner when the label
        count and width match; otherwise the conditioner starts fresh."""
        table = plan.init and plan.init.get("label_table")
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
            "base": {"path": extra["init_from"], "sha256": lora.fingerprint(den.init_from)}}
        size = save_adapter(denoiser, folder)
        save_component(folder, comp, config, None, **extra)
        say(f"LoRA adapter: {size / 1e6:.2f} MB in {folder / ADAPTER}")


def train(cfg: TrainConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
          resume: bool = False) -> Path:
    return Trainer(cfg, out, overwrite, progress, resume).run()
