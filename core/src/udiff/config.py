"""The run configuration: one readable TOML file per run, validated by pydantic.

Two runs that differ only in backbone share this file except the ``[denoiser]`` lines.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UdiffError, describe_validation


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentChoice(Strict):
    name: str = Field(description="Registered component name.")
    preset: str | None = Field(None, description="Named preset of the component.")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Overrides of the component's config fields.")


class AutoencoderChoice(ComponentChoice):
    name: str = Field("kl", description="Registered autoencoder name.")
    preset: str | None = Field("tiny", description="The autoencoder's preset (tiny, small, sd).")
    from_run: str | None = Field(None, description="Reuse the trained autoencoder of this run "
                                 "directory instead of training stage 1.")
    pretrained: str | None = Field(None, description="A pretrained diffusers AutoencoderKL or "
                                   "VQModel: a folder (e.g. a Stable Diffusion repo's vae/) or a "
                                   ".safetensors file with config.json beside it.")
    finetune: bool = Field(False, description="Train the pretrained autoencoder in stage 1 "
                           "(default: frozen, stage 1 skipped).")


class LoraChoice(Strict):
    rank: int = Field(ge=1, le=1024, description="Train LoRA adapters of rank R on the frozen "
                      "init_from base (peft) instead of every weight.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (scale alpha / r); default r.")
    targets: list[str] = Field(["attention"], min_length=1, description="LoRA targets: "
                               "'attention', 'mlp' (the backbone's groups) or module-name "
                               "suffixes, comma-separated.")


class DenoiserChoice(ComponentChoice):
    name: str = Field("unet", description="The denoiser (backbone): unet, dit, flux or a "
                      "third-party plugin's (see `udiff plugins`).")
    preset: str | None = Field(None, description="The backbone's preset, e.g. tiny, small, bench "
                               "(`udiff plugins` lists them).")
    init_from: str | None = Field(None, description="Pretrained weights in a format the backbone "
                                  "declares (see `udiff plugins --json`).")
    lora: LoraChoice | None = Field(None, description="Train LoRA adapters on the frozen "
                                    "init_from base instead of every weight.")


class ConditionerChoice(ComponentChoice):
    name: str = Field("label", description="Registered conditioner name.")


class AugmentConfig(Strict):
    translate: int = Field(0, ge=0, le=64, description="Random crop of the image padded by N "
                           "pixels (edges repeated): a translation by up to N; 0 = off.")
    hflip: bool = Field(False, description="Random horizontal flip. Off by default: digits and "
                        "handwriting must not be mirrored.")
    copies: int = Field(4, ge=1, le=64, description="When augmenting: latents cached per image for "
                        "stage 2 (the original and copies - 1 random augmentations, drawn once); "
                        "stage 1 augments every batch afresh.")

    @property
    def active(self) -> bool:
        return self.translate > 0 or self.hflip


class DataConfig(Strict):
    source: str = Field("digits", description="'digits' (embedded) or a folder of label folders.")
    image_size: int = Field(16, ge=8, le=2048, description="Side of the square training images.")
    channels: Literal[1, 3] | None = Field(None, description="1 or 3; default 1 for digits, 3 "
                                           "for folders.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class TrainingConfig(Strict):
    max_steps: int = Field(1000, ge=0, description="Denoiser optimizer steps (stage 2).")
    autoencoder_steps: int = Field(600, ge=0, description="Autoencoder optimizer steps (stage 1).")
    batch_size: int = Field(64, ge=1, description="Denoiser batch per optimizer step: the global "
                            "batch, split across processes (accelerate's split_batches).")
    autoencoder_batch_size: int = Field(64, ge=1, description="Stage-1 global batch size.")
    lr: float = Field(1e-3, gt=0, le=1, description="Denoiser AdamW learning rate.")
    autoencoder_lr: float = Field(2e-3, gt=0, le=1, description="Stage-1 AdamW learning rate.")
    autoencoder_holdout: float = Field(0.1, ge=0, lt=1, description="Fraction of each label "
                                       "stage 1 never trains on; its PSNR/SSIM are reported.")
    warmup_steps: int = Field(50, ge=0, description="Linear learning-rate warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = Field(
        "adamw", description="The denoiser's optimizer: torch's AdamW; adamw8bit: bitsandbytes' "
        "8-bit AdamW (about a quarter of the state's bytes); paged_adamw8bit: its state paged "
        "to host memory on CUDA (offload). The 8-bit ones need the lowmem extra.")
    base_precision: Literal["fp32", "bf16", "int8", "fp8"] = Field(
        "fp32", description="How frozen weights are stored -- a LoRA run's base and a frozen "
        "--autoencoder-from (or autoencoder.from_run) autoencoder: int8 or fp8 weight-only "
        "(optimum-quanto; the lowmem extra) or bf16 (a LoRA base with --mixed-precision bf16); "
        "the adapters stay fp32, the autoencoder's file and latents fp32.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay of the denoiser; 0 = off.")
    offset_noise: float = Field(0.0, ge=0, le=1, description="Offset noise: a per-sample, "
                                "per-channel constant of this scale added to the noise (0.1 is "
                                "usual); 0 = off.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per step.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="accelerate's "
                                                           "mixed precision.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    compile: bool = Field(False, description="torch.compile the denoiser (first steps compile).")
    fsdp: bool = Field(False, description="Shard parameters, gradients and optimizer state "
                       "across processes (FSDP2 via accelerate; 2+ GPUs) instead of DDP.")
    attention: Literal["sdpa", "xformers"] = Field("sdpa", description="Attention backend.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    seed: int = Field(0, description="Seed of weights, data order and noise.")
    checkpoint_every: int = Field(500, ge=0, description="Resumable checkpoint every N optimizer "
                                  "steps of each stage (0 = only on Ctrl-C).")
    keep_checkpoints: int = Field(2, ge=1, description="Complete checkpoints kept (newest).")
    grace_seconds: float = Field(30.0, gt=0, description="On SIGTERM/SIGINT: the time a "
                                 "scheduler allows to finish the step and write a checkpoint; "
                                 "if that cannot fit, none is written and the last one is kept.")
    max_nonfinite: int = Field(20, ge=1, description="Stop after this many consecutive "
                               "non-finite losses (each is skipped and counted).")
    holdout: float = Field(0.1, ge=0, lt=1, description="Fraction of each label (at least one "
                           "image) neither stage nor the reference classifier ever trains on: "
                           "validation's held-out set; 0 = train on everything.")
    split_seed: int | None = Field(None, description="Seed of the held-out splits (validation's "
                                   "and stage 1's); default: seed. `udiff compare` fixes it, so "
                                   "every seed of a comparison is judged on the same images.")
    validate_every: int = Field(0, ge=0, description="Every N denoiser steps (and at the end), "
                                "with the EMA weights: the held-out loss (fixed noise and "
                                "timesteps), a sample grid, its label accuracy and FID/KID "
                                "against the held-out images; 0 = off.")
    validate_per_label: int = Field(4, ge=1, description="Validation samples per label.")
    early_stop: int = Field(0, ge=0, description="Stop stage 2 when the early-stop metric has "
                            "not improved for N validations; the run keeps the best validated "
                            "weights; 0 = off (needs --validate-every).")
    early_stop_metric: Literal["fid", "loss", "accuracy"] = Field(
        "fid", description="What --early-stop watches: validation FID, held-out loss or label "
        "accuracy.")
    log_with: Literal["none", "tensorboard"] = Field("none", description="Also log to this "
                                                     "accelerate tracker (in <run>/tensorboard).")

    @property
    def splits_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed


class SamplingConfig(Strict):
    scheduler: str | None = Field(None, description="Sampler; default: the training scheduler.")
    steps: int | None = Field(None, ge=1, le=1000, description="Sampling steps; default: the "
                              "objective family's (flow 20, noise prediction 50).")
    guidance: float | None = Field(None, ge=0, description="Classifier-free guidance scale (1 = "
                                   "off); default: the objective family's.")
    guidance_interval: tuple[float, float] | None = Field(
        None, description="Guide only at noise levels t/T in [LO, HI] (1 = pure noise; "
        "Kynkäänniemi et al. 2024); elsewhere the conditional prediction alone. Default: the "
        "objective family's (flow: [0.2, 0.8]; noise prediction: every step); [0, 1] = always.")
    guidance_rescale: float = Field(0.0, ge=0, le=1, description="Bring the guided "
                                    "prediction's std back towards the conditional one's "
                                    "(Lin et al. 2024); 0 = off.")


# `udiff distill`: student training measured on the demo models (docs/distillation.md, "Few-step sampling"):
# 400 steps at lr 5e-4 on 1024 teacher pairs keep distillation under the teacher's training.
DISTILL_TRAINING: dict[str, Any] = {"max_steps": 400, "lr": 5e-4, "warmup_steps": 0}


class DistillConfig(Strict):
    """``udiff distill``: what the student learns from, recorded in its config."""

    teacher: str = Field(description="The teacher run directory.")
    teacher_sha256: str = Field(description="SHA-256 of the teacher's denoiser weights.")
    steps: int = Field(4, ge=1, le=8, description="Sampling steps the student is trained for.")
    guidance: float = Field(..., ge=1, description="The teacher's guidance, distilled in.")
    teacher_steps: int = Field(20, ge=2, description="Steps of the teacher's guided samples.")
    pairs: int = Field(1024, ge=16, description="Teacher (noise, sample) pairs to learn from.")
    teacher_sampler: str = Field(description="The teacher's deterministic sampler.")
    guidance_interval: tuple[float, float] | None = Field(None, description="The teacher's "
                                                          "guidance interval, distilled in.")
    guidance_rescale: float = Field(0.0, ge=0, le=1, description="The teacher's guidance "
                                    "rescale, distilled in.")


class TrainConfig(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    autoencoder: AutoencoderChoice = Field(default_factory=AutoencoderChoice)
    denoiser: DenoiserChoice = Field(default_factory=DenoiserChoice)
    scheduler: ComponentChoice | None = Field(None, description="Training scheduler, i.e. the "
                                              "objective: ddpm/ddim/dpm++ (noise prediction) or "
                                              "flow (rectified flow); default: the backbone's.")
    conditioner: ConditionerChoice = Field(default_factory=ConditionerChoice)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    distill: DistillConfig | None = Field(None, description="Set by `udiff distill`: the "
                                          "teacher and the distillation settings.")


def read_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UdiffError(f"config file {path} does not exist")
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise UdiffError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                         f"{str(e).splitlines()[0]}") from None


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(file: str | Path | None = None, overrides: dict | None = None,
            defaults: dict | None = None) -> TrainConfig:
    """defaults < config file < command-line overrides; errors name the field."""
    values = merge(defaults or {}, read_file(file) if file else {})
    values = merge(values, overrides or {})
    try:
        return TrainConfig(**values)
    except ValidationError as e:
        raise UdiffError("config: " + describe_validation("", e)) from None


def to_toml(cfg: TrainConfig) -> str:
    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
