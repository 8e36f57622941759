"""The one training loop every backbone goes through (accelerate).

Stage 1 trains the autoencoder (or reuses another run's); its latents are encoded once and cached;
stage 2 trains conditioner + denoiser on the cached latents with the scheduler's objective.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    DistributedType,
    FullyShardedDataParallelPlugin,
    ProjectConfiguration,
    set_seed,
)
from torch import nn
from tqdm.auto import tqdm

import udiff

from . import data as datasets
from . import lora, plugins, pretrained, sharding
from .checkpoint import RUN_FILE, atomic_write, component_of, load_component, save_component, write_json
from .components import Context
from .config import ComponentChoice, TrainConfig, to_toml
from .curves import training_curves
from .errors import UdiffError
from .evaluate import sampler_for
from .images import grid
from .quality import reconstruction
from .reference import accuracy, train_reference
from .resume import DIR as CHECKPOINTS
from .resume import LOCK, Checkpointer, RunLock, set_rng_state, snapshot
from .sampling import Pipeline


def say(line: str) -> None:
    """A status line on stderr, from the main process only."""
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(f"udiff: {line}", file=sys.stderr)


# May change on resume: they neither touch the weights nor draw from the training RNG
# (checkpoints hold whole tensors, so a sharded run resumes unsharded and back).
OPERATIONAL = ("checkpoint_every", "keep_checkpoints", "max_nonfinite", "validate_every",
               "validate_per_label", "log_with", "fsdp")


def config_difference(cfg: TrainConfig, saved_toml: Path) -> str | None:
    """The first field where ``cfg`` differs from a run's saved config.toml, if any."""
    import tomllib

    try:
        old = tomllib.loads(saved_toml.read_text())
    except (OSError, ValueError) as e:
        raise UdiffError(f"--resume: cannot read {saved_toml}: {e}") from None
    new = tomllib.loads(to_toml(cfg))
    for d in (old, new):
        for key in OPERATIONAL:
            d.get("training", {}).pop(key, None)
    if old == new:
        return None
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                key = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[0]
                return f"{section}.{key}: {a.get(key)!r} then, {b.get(key)!r} now"
            return f"[{section}]"
    return None


class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self, params: list[nn.Parameter], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1 - d)

    @torch.no_grad()
    def copy_to(self, params: list[nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params, strict=True):
            p.copy_(s.to(p.dtype))


def prepare_out(out: Path, overwrite: bool, clear: bool = True) -> None:
    """Refuse an --out holding anything unless --overwrite; never delete the user's files.
    ``clear=False`` only checks (every process checks; the main one clears)."""
    if out.exists() and not out.is_dir():
        raise UdiffError(f"--out {out} exists and is not a directory")
    held = out.is_dir() and any(p.name != LOCK for p in out.iterdir())
    if held and not overwrite:
        what = "a run" if (out / "config.toml").exists() else "files"
        raise UdiffError(f"--out {out} already holds {what}; choose a new --out or pass "
                         "--overwrite")
    if not clear:  # nothing created: a later error leaves no trace
        return
    if held:
        (out / RUN_FILE).unlink(missing_ok=True)  # the old run is no longer complete
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # nor are its checkpoints
    out.mkdir(parents=True, exist_ok=True)


def training_on_cpu(t) -> bool:
    return t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())


def fsdp_refusal(setting: str, processes: int) -> UdiffError:
    return UdiffError(f"--fsdp: accelerate shards a model only in a distributed GPU run (or "
                      f"other accelerators), started with --num-processes N on N GPUs; this run "
                      f"is {setting} with {processes} process(es). Drop --fsdp here")


def make_accelerator(cfg: TrainConfig, out: Path | None = None) -> Accelerator:
    t = cfg.training
    cpu = training_on_cpu(t)
    if t.device == "cuda" and not torch.cuda.is_available():
        raise UdiffError("training.device = 'cuda' but no CUDA device is available")
    # accelerate keeps one process-wide state; a second run in this process (a notebook, the
    # tests) may ask for other precision. Keep the process group (PartialState), reset the rest.
    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        tracking = t.log_with != "none" and out is not None
        accelerator = Accelerator(
            cpu=cpu, mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            # batch sizes are global: N processes x batch/N see what one process x batch sees
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            # every parameter takes part in each forward (udiff.testing checks backbones for it)
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
            fsdp_plugin=fsdp_plugin() if t.fsdp else None,
            log_with=t.log_with if tracking else None,
            project_config=ProjectConfiguration(project_dir=str(out),
                                                logging_dir=str(out / "tensorboard"))
            if tracking else None)
    except (ValueError, RuntimeError) as e:
        raise UdiffError(f"cannot set up training ({t.mixed_precision=}): {e}") from None
    if t.fsdp and accelerator.distributed_type != DistributedType.FSDP:
        os.environ.pop("ACCELERATE_USE_FSDP", None)  # set by the plugin; later runs are not
        kind = accelerator.distributed_type
        raise fsdp_refusal("not distributed" if kind == DistributedType.NO else kind.value,
                           accelerator.num_processes)
    check_batches(t, accelerator.num_processes)
    return accelerator


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """FSDP2, fully sharded (parameters, gradients, optimizer state), one unit per block the
    backbone names in ``_no_split_modules`` (the diffusers / transformers convention)."""
    return FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True,
                                          auto_wrap_policy="transformer_based_wrap")


def prepare(accelerator: Accelerator, model: nn.Module, *rest):
    """``accelerator.prepare``; under FSDP its plugin is first told this model's units
    (``model._no_split_modules``) -- it would keep those of the first model it prepared."""
    if accelerator.distributed_type == DistributedType.FSDP:
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = list(model._no_split_modules)
    return accelerator.prepare(model, *rest)


def check_batches(t, processes: int) -> None:
    for name in ("batch_size", "autoencoder_batch_size"):
        if getattr(t, name) % processes:
            raise UdiffError(f"training.{name}={getattr(t, name)} must be a multiple of the "
                             f"{processes} processes (it is the global batch, split across them)")


def require_tracker(name: str) -> None:
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UdiffError("--log-with tensorboard needs the extra: pip install "
                             "'udiff-core[tensorboard]'") from None


def require_attention(backend: str) -> None:
    """Fail before anything is written if the chosen attention backend cannot work here."""
    if backend == "sdpa":
        return
    try:
        import xformers.ops  # noqa: F401
    except Exception as e:
        raise UdiffError(f"attention 'xformers' needs the extra: pip install 'udiff-core[xformers]'"
                         f" ({type(e).__name__}: {e})") from None


def set_attention(module: nn.Module, backend: str) -> None:
    """SDPA is diffusers'/timm's default; xformers is opt-in through the module's own switch."""
    if backend == "sdpa":
        return
    hook = getattr(module, "set_attention_backend", None)
    if hook is not None:
        return hook(backend)
    targets = [m for m in module.modules()
               if hasattr(m, "enable_xformers_memory_efficient_attention")]
    if not targets:
        raise UdiffError(f"{type(module).__name__} has no xformers attention path")
    try:
        targets[0].enable_xformers_memory_efficient_attention()
    except Exception as e:
        raise UdiffError(f"xformers is installed but does not work here: {e}") from None


class Batches:
    """Endless shuffled batches whose position is exactly resumable.

    The loader's sampler draws each epoch's permutation from ``generator`` when the epoch starts;
    the generator's state at that moment plus the batches taken since are the position.
    ``streams`` are further generators that advance with the batches (the step's draws)."""

    def __init__(self, loader, generator: torch.Generator,
                 streams: dict[str, torch.Generator] | None = None) -> None:
        self.loader, self.generator, self.streams = loader, generator, streams or {}
        self.it, self.epoch_state, self.taken = None, None, 0

    def __next__(self):
        if self.it is None:
            self.epoch_state, self.taken = self.generator.get_state(), 0
            self.it = iter(self.loader)
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = None
            return next(self)
        self.taken += 1
        return batch

    def position(self) -> dict:
        streams = {name: g.get_state() for name, g in self.streams.items()}
        if self.it is None:  # at an epoch boundary: the next epoch starts from here
            return {"epoch_generator": self.generator.get_state(), "taken": 0} | streams
        return {"epoch_generator": self.epoch_state, "taken": self.taken} | streams

    def restore(self, position: dict) -> None:
        for name, g in self.streams.items():
            g.set_state(position[name])
        self.generator.set_state(position["epoch_generator"])
        self.epoch_state, self.it = self.generator.get_state(), iter(self.loader)
        for _ in range(position["taken"]):
            next(self.it)
        self.taken = position["taken"]


def shuffled(dataset, batch_size: int, seed: int):
    """A shuffling DataLoader and the generator its sampler draws from (for :class:`Batches`)."""
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         drop_last=len(dataset) > batch_size, generator=gen)
    return loader, gen


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, overwrite: bool = False,
                 progress: bool = True, resume: bool = False) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.overwrite, self.resume = overwrite, resume
        self.log_path = self.out / "log.jsonl"
        self.checkpoints = Checkpointer(self.out, cfg.training.keep_checkpoints)
        self.interrupted = False
        self.reconstruction: dict | None = None

    def log(self, **row) -> None:
        """One JSONL row; with a tracker, its numbers too (as ``stage/key`` at the row's step)."""
        if self.accelerator.is_main_process:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.cfg.training.log_with != "none":
            self.accelerator.log({f"{row['stage']}/{k}": v for k, v in row.items()
                                  if k not in ("stage", "step") and type(v) in (int, float)},
                                 step=row["step"])

    def bar(self, total: int, desc: str, initial: int = 0):
        return tqdm(total=total, initial=initial, desc=desc,
                    disable=not (self.progress and self.accelerator.is_main_process))

    # -- components ------------------------------------------------------------------------
    def scheduler_choice(self):
        if self.cfg.scheduler is not None:
            return self.cfg.scheduler
        den = plugins.get("denoiser", self.cfg.denoiser.name)
        return ComponentChoice(name=den.meta.get("default_scheduler", "ddpm"))

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def prepare_out(self, overwrite: bool) -> None:
        """Every process checks --out before the main one clears it (no process sees it half
        cleared)."""
        prepare_out(self.out, overwrite, clear=False)
        self.accelerator.wait_for_everyone()
        if self.main:
            prepare_out(self.out, overwrite)
        self.accelerator.wait_for_everyone()

    # -- resume and interruption -----------------------------------------------------------
    def start(self) -> Path | None:
        """Prepare --out; with --resume, the checkpoint to continue from (None: from scratch)."""
        if not self.resume:
            self.prepare_out(self.overwrite)
            return None
        saved = self.out / "config.toml"
        if (self.out / RUN_FILE).exists():
            raise UdiffError(f"--resume: the run in {self.out} is already complete")
        if not saved.exists():
            self.prepare_out(False)
            say(f"--resume: nothing to resume in {self.out}; starting the run from the beginning")
            return None
        differs = config_difference(self.cfg, saved)
        if differs:
            raise UdiffError(f"--resume: the run in {self.out} was started with another "
                             f"configuration ({differs}); resume with the same flags or config")
        latest = self.checkpoints.latest()
        if latest is None:
            say(f"--resume: no complete checkpoint in {self.out}; starting the run from the "
                "beginning")
        else:
            say(f"--resume: continuing from {latest.name}")
        return latest

    def checkpoint_due(self, step: int, last: int) -> bool:
        every = self.cfg.training.checkpoint_every
        return self.interrupted or (every > 0 and step % every == 0 and step < last)

    def save_checkpoint(self, stage: str, step: int, modules: dict, optimizer, lr_scheduler,
                        batches: Batches, ema=None, extra: dict | None = None) -> None:
        files = snapshot(modules, optimizer, ema, keep=self.main)  # collective when sharded
        if self.main:
            self.checkpoints.save(stage, step, files, lr_scheduler, batches.position(), extra)
        self.accelerator.wait_for_everyone()
        if self.interrupted:
            say(f"interrupted: checkpoint {stage} step {step} saved; continue with --resume")
            raise KeyboardInterrupt

    def restore(self, checkpoint: Path, modules: dict, optimizer, lr_scheduler,
                batches: Batches, ema=None) -> dict:
        got = Checkpointer.load(checkpoint, modules, optimizer, lr_scheduler, ema)
        batches.restore(got["data"])
        set_rng_state(*got["rng"])
        return got["state"]

    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.interrupted = True

    # -- the run ---------------------------------------------------------------------------
    def check(self, processes: int = 1):
        """Resolve every component, the data and --out before anything is written (bad input
        loses nothing); returns the data and the scheduler's component and config."""
        cfg = self.cfg
        for role in ("autoencoder", "denoiser", "conditioner"):
            choice = getattr(cfg, role)
            plugins.get(role, choice.name).make_config(choice.preset, choice.options)
        sched_choice = self.scheduler_choice()
        sched_comp = plugins.get("scheduler", sched_choice.name)
        sched_cfg = sched_comp.make_config(sched_choice.preset, sched_choice.options)
        require_attention(cfg.training.attention)
        require_tracker(cfg.training.log_with)
        data = datasets.load(cfg.data.source, cfg.data.image_size, cfg.data.channels)
        check_batches(cfg.training, processes)
        self.read_pretrained(data)
        if self.out.exists() and not self.out.is_dir():
            raise UdiffError(f"--out {self.out} exists and is not a directory")
        if not self.resume:
            prepare_out(self.out, self.overwrite, clear=False)
        return data, sched_comp, sched_cfg

    def read_pretrained(self, data: datasets.LabelledImages) -> None:
        """Read --autoencoder-from and --init-from now, so a wrong path, architecture, pickle or
        shape fails before --out is touched."""
        cfg = self.cfg
        ctx = Context(image_channels=data.images.shape[1], image_size=cfg.data.image_size,
                      num_labels=len(data.label_names))
        self.ae_pretrained = self.init = None
        if cfg.autoencoder.pretrained:
            self.ae_pretrained = pretrained.autoencoder(cfg.autoencoder.pretrained, ctx)
        den = cfg.denoiser
        if den.lora and not den.init_from:
            raise UdiffError("LoRA trains adapters on a pretrained base: give --init-from")
        if den.lora:
            lora.require()
        if not den.init_from:
            return
        if self.ae_pretrained:
            ae = self.ae_pretrained[2]
        elif cfg.autoencoder.from_run:
            ae, _ = load_component(Path(cfg.autoencoder.from_run) / "autoencoder", "autoencoder", ctx)
        else:
            ae = plugins.build("autoencoder", cfg.autoencoder, ctx)[2]
        ctx = ctx.replace(latent_channels=ae.latent_channels,
                          latent_size=cfg.data.image_size // ae.downsample)
        comp = plugins.get("denoiser", den.name)
        read = pretrained.denoiser_state(comp, den.init_from, comp.make_config(den.preset,
                                                                                den.options), ctx)
        config = comp.make_config(options=read["options"])
        module = comp.build(config, ctx)
        pretrained.load_strict(module, read["state"], Path(den.init_from))
        self.init = {"component": comp, "config": config, "module": module,
                     "label_table": read.get("label_table")}
        if den.lora:
            lora.targets(comp, den.lora.targets)  # unknown groups fail here

    def run(self) -> Path:
        data, sched_comp, sched_cfg = self.check()
        self.accelerator = make_accelerator(self.cfg, self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        in_main_thread = threading.current_thread() is threading.main_thread()
        with RunLock(self.out) if self.accelerator.is_main_process else contextlib.nullcontext():
            previous = signal.signal(signal.SIGINT, self._on_sigint) if in_main_thread else None
            try:
                return self._run(data, sched_comp, sched_cfg)
            finally:
                self.accelerator.end_training()
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)

    def _run(self, data, sched_comp, sched_cfg) -> Path:
        cfg = self.cfg
        checkpoint = self.start()
        if cfg.training.log_with != "none":  # after start(): the tracker creates its folder
            self.accelerator.init_trackers("udiff")
        stage = Checkpointer.state(checkpoint)["stage"] if checkpoint else None
        start = time.time()
        if checkpoint is None and self.main:
            atomic_write(self.out / "config.toml", lambda p: p.write_text(to_toml(cfg)))
        set_seed(cfg.training.seed)
        ctx = Context(image_channels=data.images.shape[1], image_size=cfg.data.image_size,
                      num_labels=len(data.label_names))
        if stage == "denoiser":  # stage 1 finished before the checkpoint: its results are saved
            autoencoder, meta = load_component(self.out / "autoencoder", "autoencoder", ctx)
            cache = safetensors.torch.load_file(str(self.out / "latents.safetensors"))
            latents, labels = cache["latents"], cache["labels"]
            scaling = meta["scaling_factor"]
            self.score_autoencoder(autoencoder, data)
        else:
            autoencoder, ae_comp, ae_cfg, scaling = self.stage1(
                data, ctx, checkpoint if stage == "autoencoder" else None)
            if self.main:  # the cache is encoded and written once; the others read it
                images, labels = self.cached_images(data)
                latents = self.encode(autoencoder, images)
                # SD's scaling_factor: latents of unit variance for the diffusion schedule.
                scaling = scaling or float(1.0 / latents.std())
                latents = latents * scaling
                save_component(self.out / "autoencoder", ae_comp, ae_cfg, autoencoder,
                               scaling_factor=scaling, from_run=cfg.autoencoder.from_run)
                atomic_write(self.out / "latents.safetensors", lambda p: safetensors.torch.save_file(
                    {"latents": latents.contiguous(), "labels": labels.contiguous()}, str(p)))
            self.accelerator.wait_for_everyone()
            if not self.main:
                cache = safetensors.torch.load_file(str(self.out / "latents.safetensors"))
                latents, labels = cache["latents"], cache["labels"]
                scaling = component_of(self.out / "autoencoder", "autoencoder")[2][
                    "scaling_factor"]
        ctx = ctx.replace(latent_channels=autoencoder.latent_channels,
                          latent_size=cfg.data.image_size // autoencoder.downsample)

        set_seed(cfg.training.seed + 1)
        if self.init:
            den_comp, den_cfg, denoiser = (self.init[k] for k in ("component", "config", "module"))
        else:
            den_comp, den_cfg, denoiser = plugins.build("denoiser", cfg.denoiser, ctx)
        lo = cfg.denoiser.lora
        adapted = (lambda m: lora.add(m, lo.rank, lo.alpha, lora.targets(den_comp, lo.targets))
                   ) if lo else (lambda m: m)
        denoiser, den_ctx = adapted(denoiser), ctx
        ctx = ctx.for_denoiser(denoiser)
        cond_comp, cond_cfg, conditioner = plugins.build("conditioner", cfg.conditioner, ctx)
        self.reuse_label_table(conditioner)
        scheduler = sched_comp.build(sched_cfg, ctx)
        validation = None
        # Sharded modules can only sample in lock-step on every process; whole ones on the main.
        if cfg.training.validate_every and (self.main or cfg.training.fsdp):
            validation = Validation(self, data, Pipeline(
                autoencoder, denoiser, conditioner, sched_comp.name, sched_cfg, data.label_names,
                scaling, ctx, freeze=False))
        self.stage2(denoiser, conditioner, scheduler, latents, labels,
                    checkpoint if stage == "denoiser" else None, validation)
        if sharding.is_sharded(denoiser):  # whole modules for the main process to save
            denoiser = sharding.plain_copy(
                denoiser, lambda: adapted(den_comp.build(den_cfg, den_ctx)), self.main)
            conditioner = sharding.plain_copy(
                conditioner, lambda: cond_comp.build(cond_cfg, ctx), self.main)

        if self.main:
            self.save_denoiser(den_comp, den_cfg, denoiser)
            save_component(self.out / "conditioner", cond_comp, cond_cfg, conditioner,
                           labels=data.label_names)
            save_component(self.out / "scheduler", sched_comp, sched_cfg, None)
            write_json(self.out / RUN_FILE, {
                "udiff_version": udiff.__version__, "labels": data.label_names,
                "context": ctx.__dict__ | {"cond_dim": 0, "pooled_dim": 0},
                "wall_seconds": time.time() - start, "autoencoder": self.reconstruction,
                "processes": self.accelerator.num_processes,
                "distributed_type": self.accelerator.distributed_type.value,
            })
            training_curves(self.log_path, self.out / "training.png")
        self.accelerator.wait_for_everyone()
        return self.out

    def reuse_label_table(self, conditioner: nn.Module) -> None:
        """A pretrained class-embedding table (DiT's) seeds the label conditioner when the label
        count and width match; otherwise the conditioner starts fresh."""
        table = self.init and self.init.get("label_table")
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

    def save_denoiser(self, comp, config, denoiser: nn.Module) -> None:
        den, folder = self.cfg.denoiser, self.out / "denoiser"
        extra = {"preset": den.preset, "ema": self.cfg.training.ema_decay > 0,
                 "init_from": str(Path(den.init_from).resolve()) if den.init_from else None}
        if not den.lora:
            return save_component(folder, comp, config, denoiser, **extra)
        extra["lora"] = den.lora.model_dump() | {
            "modules": lora.targets(comp, den.lora.targets),
            "base": {"path": extra["init_from"], "sha256": lora.fingerprint(den.init_from)}}
        size = lora.save(denoiser, folder)
        save_component(folder, comp, config, None, **extra)
        say(f"LoRA adapter: {size / 1e6:.2f} MB in {folder / lora.ADAPTER_FILE}")

    def stage1(self, data: datasets.LabelledImages, ctx: Context, checkpoint: Path | None):
        """The autoencoder, its (component, config), and its scaling factor if already known."""
        cfg, acc = self.cfg, self.accelerator
        choice = cfg.autoencoder
        if choice.from_run:
            folder = Path(choice.from_run) / "autoencoder"
            comp, config, meta = component_of(folder, "autoencoder")
            autoencoder, _ = load_component(folder, "autoencoder", ctx)
            self.check_latent_grid(autoencoder)
            autoencoder = autoencoder.to(acc.device).eval()
            self.score_autoencoder(autoencoder, data)
            return autoencoder, comp, config, meta["scaling_factor"]
        if choice.pretrained:
            comp, config, autoencoder, scaling = self.ae_pretrained
            self.check_latent_grid(autoencoder)
            if not choice.finetune:  # frozen: straight to the latent cache
                autoencoder = autoencoder.to(acc.device)
                self.score_autoencoder(autoencoder, data)
                return autoencoder, comp, config, scaling
            autoencoder.train().requires_grad_(True)
        else:
            comp, config, autoencoder = plugins.build("autoencoder", choice, ctx)
            scaling = None
        self.check_latent_grid(autoencoder)
        t, aug = cfg.training, cfg.data.augment
        train_part, _ = datasets.autoencoder_split(data, t.autoencoder_holdout, t.seed)
        opt = torch.optim.AdamW(autoencoder.parameters(), lr=t.autoencoder_lr)
        loader, gen = shuffled(torch.utils.data.TensorDataset(train_part.images),
                               t.autoencoder_batch_size, t.seed)
        objective, opt, loader = prepare(acc, AutoencoderObjective(autoencoder), opt, loader)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, t.autoencoder_steps))
        batches = Batches(loader, gen)
        modules = {"autoencoder": autoencoder}
        first = 0
        if checkpoint is not None:
            first = self.restore(checkpoint, modules, opt, sched, batches)["step"]
        objective.train()
        with self.bar(t.autoencoder_steps, "stage 1: autoencoder", first) as bar:
            for step in range(first, t.autoencoder_steps):
                (images,) = next(batches)
                if aug.active:  # the global RNG: its state is in every checkpoint
                    images = datasets.augment(images, aug.translate, aug.hflip)
                with acc.autocast():
                    loss, logs = objective(images)
                acc.backward(loss)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step % 50 == 0 or step == t.autoencoder_steps - 1:
                    self.log(stage="autoencoder", step=step, loss=loss.item(), **logs)
                if self.checkpoint_due(step + 1, t.autoencoder_steps):
                    self.save_checkpoint("autoencoder", step + 1, modules, opt, sched, batches)
        if sharding.is_sharded(autoencoder):  # every process encodes and decodes with it
            autoencoder = sharding.plain_copy(autoencoder, lambda: comp.build(config, ctx),
                                              device=acc.device)
        autoencoder.eval()
        self.score_autoencoder(autoencoder, data)
        return autoencoder, comp, config, scaling

    def score_autoencoder(self, autoencoder: nn.Module, data: datasets.LabelledImages) -> None:
        """PSNR/SSIM of the autoencoder on the images stage 1 never saw (all, if none held out)."""
        t = self.cfg.training
        _, held = datasets.autoencoder_split(data, t.autoencoder_holdout, t.seed)
        r = reconstruction(autoencoder, (held or data).images) | {"held_out": held is not None}
        self.reconstruction = r
        self.log(stage="autoencoder_eval", step=t.autoencoder_steps, **r)
        say(f"autoencoder: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f} on {r['images']} "
            f"{'held-out' if r['held_out'] else 'training'} images")

    def cached_images(self, data: datasets.LabelledImages) -> tuple[torch.Tensor, torch.Tensor]:
        """What stage 2 learns from: every image, plus ``copies - 1`` augmented copies drawn once
        from a seeded generator (the cache is fixed, so augmentation must happen here)."""
        aug = self.cfg.data.augment
        if not aug.active:
            return data.images, data.labels
        gen = torch.Generator().manual_seed(self.cfg.training.seed + 3)
        copies = [data.images] + [datasets.augment(data.images, aug.translate, aug.hflip, gen)
                                  for _ in range(aug.copies - 1)]
        return torch.cat(copies), data.labels.repeat(aug.copies)

    def check_latent_grid(self, autoencoder: nn.Module) -> None:
        size, f = self.cfg.data.image_size, autoencoder.downsample
        if size % f:
            raise UdiffError(f"data.image_size={size} must be a multiple of the autoencoder's "
                             f"downsampling factor {f}")

    @torch.no_grad()
    def encode(self, autoencoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Every image encoded once: unscaled latents ``[N, c, h, w]`` on CPU."""
        dev = self.accelerator.device
        return torch.cat([autoencoder.encode(images[i:i + 256].to(dev)).float().cpu()
                          for i in range(0, len(images), 256)])

    def stage2(self, denoiser: nn.Module, conditioner: nn.Module, scheduler,
               latents: torch.Tensor, labels: torch.Tensor, checkpoint: Path | None,
               validation: Validation | None = None) -> None:
        """Train ``denoiser`` and ``conditioner`` in place; they end holding the EMA weights."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.training
        training = DenoiserTraining(acc, denoiser, conditioner, scheduler, t)
        loader, gen = shuffled(torch.utils.data.TensorDataset(latents, labels), t.batch_size,
                               t.seed + 2)
        batches = Batches(acc.prepare(loader), gen, training.draws.streams)
        modules = {"denoiser": denoiser, "conditioner": conditioner}
        if checkpoint is not None:
            state = self.restore(checkpoint, modules, training.optimizer, training.lr_scheduler,
                                 batches, training.ema)
            training.steps, training.nonfinite = state["step"], state["nonfinite"]
        with self.bar(t.max_steps, f"stage 2: {cfg.denoiser.name}", training.steps) as bar:
            while training.steps < t.max_steps:
                loss = training.step(*next(batches))
                if loss is None:
                    continue  # accumulating micro-batches, or a skipped non-finite step
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}")
                if training.steps % 50 == 0 or training.steps == t.max_steps:
                    self.log(stage="denoiser", step=training.steps, loss=loss,
                             lr=training.lr_scheduler.get_last_lr()[0],
                             skipped_nonfinite=training.skipped)
                if validation and (training.steps % t.validate_every == 0
                                   or training.steps == t.max_steps):
                    self.log(stage="validation", step=training.steps, **validation(training))
                if self.checkpoint_due(training.steps, t.max_steps):
                    self.save_checkpoint("denoiser", training.steps, modules, training.optimizer,
                                         training.lr_scheduler, batches, training.ema,
                                         {"nonfinite": training.nonfinite})
        training.finish()


class AutoencoderObjective(nn.Module):
    """Stage 1's loss as a forward pass, so DDP (which syncs gradients of what went through its
    forward) sees it."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self._no_split_modules = sharding.units(autoencoder)  # FSDP units: its blocks

    def forward(self, images: torch.Tensor):
        return self.autoencoder.loss(images)


class Denoising(nn.Module):
    """Conditioner + denoiser as one module: one DDP wrapper, one forward.
    ``(noisy [B, c, h, w], timesteps [B], labels [B]) -> prediction [B, c, h, w]``."""

    def __init__(self, denoiser: nn.Module, conditioner: nn.Module) -> None:
        super().__init__()
        self.denoiser, self.conditioner = denoiser, conditioner
        # FSDP units: the backbone's blocks, and denoiser and conditioner each whole, so that
        # validation can call them directly (their forward gathers their shards).
        self._no_split_modules = [*sharding.units(denoiser, conditioner),
                                  type(denoiser).__name__, type(conditioner).__name__]

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor):
        out = self.denoiser(noisy, timesteps, self.conditioner(labels))
        c = noisy.shape[1]  # learned-variance backbones return 2c channels: keep the prediction
        return out if out.shape[1] == c else out[:, :c].contiguous()  # a copy, not a view (FSDP)


class Draws:
    """The per-sample randomness of a training step — noise, noise levels, label dropout — drawn
    for the whole global batch on every process from shared generators, each process keeping its
    own rows. N processes x batch B therefore draw exactly what one process x batch N*B draws:
    data parallelism changes the order of the arithmetic, never the samples.

    Noise comes from a generator on the training device (no host-to-device copy of the largest
    tensor); noise levels and dropout from a CPU one."""

    def __init__(self, seed: int | None = None, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if seed is None:  # follow the global RNG (single-process helpers and tests)
            seed = int(torch.randint(2**62, (1,)))
        self.cpu = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)
        self.noise = torch.Generator(self.device).manual_seed(seed + 1)
        self.rank, self.world = rank, world

    @property
    def streams(self) -> dict[str, torch.Generator]:
        return {"draws": self.cpu, "draws_noise": self.noise}

    def mine(self, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        b = len(like)
        return full[self.rank * b:(self.rank + 1) * b].to(like.device)

    def normal(self, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        full = torch.randn((len(like) * self.world, *shape), generator=self.noise,
                           device=self.device)
        return self.mine(full, like).to(like.dtype)

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        return self.mine(torch.rand(len(like) * self.world, generator=self.cpu), like)

    def timesteps(self, scheduler, like: torch.Tensor) -> torch.Tensor:
        full = scheduler.sample_timesteps(len(like) * self.world, "cpu", generator=self.cpu)
        return self.mine(full, like)


def objective_loss(model: nn.Module, scheduler, x0: torch.Tensor, y: torch.Tensor,
                   offset_noise: float = 0.0, draws: Draws | None = None,
                   null_label: int | None = None, label_dropout: float = 0.0):
    """Objective-agnostic: the scheduler supplies timesteps, noisy input and target; ``model`` is a
    :class:`Denoising`. Labels are replaced by ``null_label`` with probability ``label_dropout``
    (classifier-free guidance)."""
    draws = draws or Draws(device=x0.device)
    noise = draws.normal(x0, x0.shape[1:])
    if offset_noise:  # a constant per sample and channel: lets the model shift mean brightness
        noise = noise + offset_noise * draws.normal(x0, (x0.shape[1], *[1] * (x0.ndim - 2)))
    ts = draws.timesteps(scheduler, x0)
    if label_dropout > 0:
        y = torch.where(draws.uniform(y) < label_dropout, torch.full_like(y, null_label), y)
    pred = model(scheduler.add_noise(x0, noise, ts), ts, y)
    target = scheduler.target(x0, noise, ts)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(
        dim=tuple(range(1, x0.ndim)))  # [B]
    weight = scheduler.loss_weight(ts)
    if weight is not None:
        per_sample = per_sample * weight
    return per_sample.mean()


class DenoiserTraining:
    """Stage 2's state (modules, AdamW, warm-up, EMA) and one optimizer step through accelerate.

    The trainer's loop and the benchmark harness both drive :meth:`step`, so what the benchmark
    times is exactly what training runs."""

    def __init__(self, accelerator: Accelerator, denoiser: nn.Module, conditioner: nn.Module,
                 scheduler, t) -> None:
        """``t``: the run's TrainingConfig (lr, warm-up, EMA, clipping, seed, ...)."""
        if t.gradient_checkpointing:
            if not hasattr(denoiser, "enable_gradient_checkpointing"):
                raise UdiffError(f"{type(denoiser).__name__} has no "
                                 "enable_gradient_checkpointing()")
            denoiser.enable_gradient_checkpointing()
        set_attention(denoiser, t.attention)
        if t.compile:
            denoiser.compile()  # in place: parameter names and state dict keys are unchanged
        self.accelerator, self.scheduler = accelerator, scheduler
        trained = [p for mod in (denoiser, conditioner) for p in mod.parameters()
                   if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=t.lr, weight_decay=t.weight_decay)
        warm = max(1, t.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        # A DDP-wrapped model shares its parameters with the originals; FSDP replaces them (in
        # the same modules, same order) with sharded ones: read them after prepare.
        self.model, self.optimizer, self.lr_scheduler = prepare(accelerator,
            Denoising(denoiser, conditioner), opt, sched)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = EMA(self.params, t.ema_decay) if t.ema_decay > 0 else None
        self.model.train()
        self.draws = Draws(t.seed + 4, accelerator.process_index, accelerator.num_processes,
                           accelerator.device)
        # Classifier-free guidance: the loop drops labels (from the shared draws), not the
        # conditioner, so every process count drops the same ones.
        self.null_label = int(conditioner.null(1)[0])
        self.label_dropout = float(getattr(conditioner, "dropout", 0.0))
        self.steps = 0  # completed optimizer steps
        self.max_nonfinite = t.max_nonfinite
        self.offset_noise = t.offset_noise
        self.nonfinite = 0  # consecutive non-finite losses
        self.skipped = 0  # all skipped steps of this process

    def step(self, x0: torch.Tensor, y: torch.Tensor) -> float | None:
        """One micro-batch; returns the loss when it completed an optimizer step, else None
        (accumulating, or a non-finite loss skipped: no update, counted)."""
        acc = self.accelerator
        with acc.accumulate(self.model):
            loss = objective_loss(self.model, self.scheduler, x0, y, self.offset_noise,
                                  self.draws, self.null_label, self.label_dropout)
            # The mean over processes: all of them skip a step if any loss is not finite.
            global_loss = acc.reduce(loss.detach().clone(), reduction="mean").item()
            if not math.isfinite(global_loss):
                self.optimizer.zero_grad(set_to_none=True)
                self.nonfinite += 1
                self.skipped += 1
                if self.nonfinite >= self.max_nonfinite:
                    raise UdiffError(f"training stopped: {self.nonfinite} consecutive non-finite "
                                     f"losses at step {self.steps} (lower training.lr); the last "
                                     "complete checkpoint is kept")
                return None
            self.nonfinite = 0
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not acc.sync_gradients:
            return None
        self.steps += 1
        if self.ema is not None:
            self.ema.update(self.params, self.steps)
        return global_loss

    def finish(self) -> None:
        """Leave the EMA weights in the modules (what the run saves)."""
        if self.ema is not None:
            self.ema.copy_to(self.params)


class Validation:
    """Every ``validate_every`` steps: sample ``validate_per_label`` images per label with the EMA
    weights, write ``validation/step-N.png`` and return the reference classifier's accuracy.

    Runs under a forked RNG, so validating (or not) never changes the trained weights."""

    def __init__(self, trainer: Trainer, data: datasets.LabelledImages, pipe: Pipeline) -> None:
        self.trainer, self.pipe, self.data = trainer, pipe, data
        t = trainer.cfg.training
        with torch.random.fork_rng(devices=[]):
            self.classifier, self.reference_accuracy = train_reference(data, seed=t.seed,
                                                                       progress=False)
        trainer.log(stage="reference", step=0, held_out_accuracy=self.reference_accuracy)

    def __call__(self, training: DenoiserTraining) -> dict:
        cfg, pipe = self.trainer.cfg, self.pipe
        live = [p.detach().clone() for p in training.params]
        if training.ema is not None:
            training.ema.copy_to(training.params)
        pipe.denoiser.eval(), pipe.conditioner.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                sampler, guidance = sampler_for(pipe, cfg.sampling.scheduler, None)
                images, labels = pipe.sample_tensor(range(len(self.data.label_names)),
                                                    cfg.training.validate_per_label,
                                                    cfg.sampling.steps, guidance, 0, sampler)
        finally:
            with torch.no_grad():
                for p, v in zip(training.params, live, strict=True):
                    p.copy_(v)
            pipe.denoiser.train(), pipe.conditioner.train()
        if self.trainer.accelerator.is_main_process:
            path = self.trainer.out / "validation" / f"step-{training.steps:06d}.png"
            path.parent.mkdir(exist_ok=True)
            grid(images, rows=len(self.data.label_names)).save(path)
        return {"label_accuracy": accuracy(self.classifier, images, labels)[0]}


def train(cfg: TrainConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
          resume: bool = False):
    return Trainer(cfg, out, overwrite, progress, resume).run()

