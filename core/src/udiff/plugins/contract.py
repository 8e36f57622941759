"""The typed plugin contract: what each role may register beside its config model and factory
(frozen, validated metadata), and the capabilities a built component may offer (Protocols).

Every name here is documented in ``docs/plugins.md``. Nothing here imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import did_you_mean

# A callable, or "package.module:attribute.path" imported when first called (light registration).
Reference = Callable[..., Any] | str


def resolve(ref: Reference) -> Callable[..., Any]:
    """The callable a :data:`Reference` names (imports its module now)."""
    if not isinstance(ref, str):
        return ref
    module, _, path = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for attr in path.split("."):
        obj = getattr(obj, attr)
    if not callable(obj):
        raise TypeError(f"{ref!r} is not callable")
    return obj


def is_reference(ref: Any) -> bool:
    return callable(ref) or (isinstance(ref, str) and ref.count(":") == 1
                             and all(ref.split(":")))


class Meta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class DenoiserMeta(Meta):
    default_scheduler: str = Field("ddpm", description="The scheduler (objective) this backbone "
                                   "trains with when the run names none.")
    init_formats: dict[str, Reference] = Field(default_factory=dict, description=(
        "--init-from readers: {format name: reader(path, config, context) -> {'options', "
        "'state', 'label_table' (optional)}}; a reader raises udiff.weights.pretrained.NotThisFormat "
        "for another format."))
    lora_targets: dict[str, list[str]] = Field(default_factory=dict, description=(
        "--lora-targets groups ('attention', 'mlp') -> module-name suffixes."))


class AutoencoderMeta(Meta):
    diffusers_class: str | None = Field(None, description="The diffusers class (config.json "
                                        "_class_name) --autoencoder-from maps to this component.")
    from_diffusers_config: Reference | None = Field(None, description=(
        "diffusers config dict -> this component's options (raises ValueError if it cannot)."))


class SchedulerMeta(Meta):
    family: Literal["noise", "flow"] = Field("noise", description="The objective family: a run "
                                             "samples with any scheduler of the family it "
                                             "trained with.")
    stochastic: bool = Field(False, description="The sampler draws noise during its steps (from "
                             "the request's generator): the server runs it unbatched so that "
                             "each request's draws stay its own.")


class ConditionerMeta(Meta):
    pass


META: dict[str, type[Meta]] = {"autoencoder": AutoencoderMeta, "denoiser": DenoiserMeta,
                               "scheduler": SchedulerMeta, "conditioner": ConditionerMeta}


def parse_meta(role: str, name: str, meta: dict[str, Any]) -> Meta:
    """The role's typed metadata; an unknown or mistyped key raises ValueError in one line."""
    cls = META[role]
    for key in meta:
        if key not in cls.model_fields:
            known = ", ".join(cls.model_fields) or "none"
            raise ValueError(f"{role} {name!r}: unknown registration key {key!r}"
                             f"{did_you_mean(key, cls.model_fields)} (known: {known})")
    for key in ("init_formats", "from_diffusers_config"):
        value = meta.get(key)
        refs = value.values() if isinstance(value, dict) else [value] if value is not None else []
        bad = [r for r in refs if not is_reference(r)]
        if bad:
            raise ValueError(f"{role} {name!r}: {key} needs callables or 'module:attribute' "
                             f"strings, got {bad[0]!r}")
    try:
        return cls(**meta)
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"{role} {name!r}: {'.'.join(map(str, err['loc']))}: "
                         f"{err['msg']}") from None


# -- what built components offer -----------------------------------------------------------------
# Required members first; the optional capabilities are checked with isinstance(module, P).

@runtime_checkable
class Denoiser(Protocol):
    """``forward(noisy [B, c, h, w], timesteps [B], conditioning) -> [B, c (or 2c), h, w]``;
    ``cond_dim``: the token width D it wants."""

    cond_dim: int

    def __call__(self, noisy: Any, timesteps: Any, conditioning: Any) -> Any: ...


@runtime_checkable
class Autoencoder(Protocol):
    """``encode``: images ``[B, C, H, W]`` in [-1, 1] -> latents ``[B, c, H/f, W/f]``; ``decode``
    inverts it; ``loss(images) -> (loss, logs)`` is stage 1's objective."""

    latent_channels: int
    downsample: int

    def encode(self, images: Any) -> Any: ...
    def decode(self, latents: Any) -> Any: ...
    def loss(self, images: Any) -> tuple[Any, dict[str, float]]: ...


@runtime_checkable
class Conditioner(Protocol):
    """``forward(labels [B]) -> Conditioning``; ``null(batch)``: the unconditional labels;
    ``dropout``: the rate at which the training loop swaps labels for the null one."""

    dropout: float

    def null(self, batch: int, device: Any = None) -> Any: ...


@runtime_checkable
class PooledWidth(Protocol):
    """A denoiser whose pooled conditioning is narrower/wider than its tokens (Flux: 768)."""

    pooled_dim: int


@runtime_checkable
class GradientCheckpointing(Protocol):
    """``--gradient-checkpointing``: recompute activations in backward."""

    def enable_gradient_checkpointing(self) -> None: ...


@runtime_checkable
class AttentionBackend(Protocol):
    """``--attention xformers`` on a module without diffusers' own xformers switch."""

    def set_attention_backend(self, backend: str) -> None: ...


@runtime_checkable
class ShardedBlocks(Protocol):
    """``--fsdp``: the block classes sharded one unit each (diffusers/transformers convention)."""

    _no_split_modules: list[str]


@runtime_checkable
class DenoiserExport(Protocol):
    """``udiff export``: ``(diffusers model, subfolder, pipeline class name or None)``."""

    def to_diffusers(self, conditioner: Any) -> tuple[Any, str, str | None]: ...


@runtime_checkable
class AutoencoderExport(Protocol):
    """``udiff export`` and ``--autoencoder-from``: the diffusers model inside."""

    def to_diffusers(self, scaling_factor: float) -> Any: ...
    def diffusers_model(self) -> Any: ...
