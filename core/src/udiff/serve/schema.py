"""What the HTTP API takes and gives: the request body, the server's limits, the error body.
Nothing here imports torch or FastAPI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from ..sampling.spec import SamplingSpec


class Limits(BaseModel):
    """Per-server bounds; every one is reported by ``GET /v1/runs``."""

    max_batch_images: int = Field(16, ge=1, description="Images one denoiser batch may hold.")
    max_queue: int = Field(64, ge=1, description="Jobs that may wait; more get 503.")
    max_steps: int = Field(100, ge=1, description="Sampling steps a request may ask for.")
    max_images: int = Field(16, ge=1, description="Images one request may ask for.")
    max_guidance: float = Field(20.0, gt=0, description="Largest guidance scale.")
    max_body_bytes: int = Field(16384, ge=256, description="Largest request body.")
    linger_ms: float = Field(5.0, ge=0, description="How long a batch that is not full waits "
                             "for more requests.")
    job_ttl_s: float = Field(600.0, gt=0, description="How long a finished job is kept.")
    max_finished_jobs: int = Field(1000, ge=1, description="Finished jobs kept at most.")


def whole(value):
    """JSON Schema's integer is a number without a fraction: 3.0 is one (true and "3" are not)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**bounds):
    """A JSON integer within ``bounds`` (the validator last: pydantic then writes the bounds
    into the JSON schema as minimum/maximum)."""
    return Annotated[StrictInt, Field(**bounds), BeforeValidator(whole)]


Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]  # "" is never a name
Index = integer(ge=0, lt=2**31)
SEED_MAX = 2**53 - 1  # exact as a JSON number in every client (and a schema validator's float)


class GenerateRequest(BaseModel):
    """``POST /v1/generate`` and ``POST /v1/jobs``. Strict: JSON's types as the schema says them
    (``true`` is not 1, ``"7"`` is not 7, ``""`` is not a sampler)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    run: Name | None = Field(None, description="The run's folder name; may be left out when "
                             "the key (or the server) has one run.")
    labels: list[Index | Name] = Field(min_length=1, max_length=256,
                                       description="Label indices or names.")
    per_label: integer(ge=1, le=2**16) = Field(1, description="Images per label.")
    steps: integer(ge=1, le=2**16) | None = Field(
        None, description="Sampling steps (default: the run's).")
    sampler: Name | None = Field(None, description="A scheduler of the run's objective family.")
    guidance: StrictFloat | None = Field(None, ge=0, le=1e6,
                                         description="Classifier-free guidance (1 = off).")
    guidance_interval: tuple[StrictFloat, StrictFloat] | None = Field(
        None, description="[lo, hi]: guide only where t/T lies in it (1 = pure noise); "
        "default: the run's, else every step.")
    guidance_rescale: StrictFloat | None = Field(None, ge=0, le=1, description="Rescale the "
                                                 "guided prediction's std toward the "
                                                 "conditional one's (0 = off); default: the "
                                                 "run's.")
    seed: integer(ge=0, le=SEED_MAX) | None = Field(
        None, description="Seed of the initial noise; absent: a random one, echoed back.")


@dataclass(frozen=True)
class Work:
    """A request resolved against its run: what the worker runs."""

    run: str
    labels: tuple[int, ...]  # one entry per image, label-major (as Pipeline.sample_tensor)
    per_label: int
    spec: SamplingSpec  # the run's own with the request's fields, its seed drawn if not given
    stochastic: bool  # the sampler draws noise during its steps: never batched with another

    @property
    def images(self) -> int:
        return len(self.labels)

    def batch_key(self) -> tuple:
        """Jobs with equal keys may share a denoiser batch (the run fixes the LoRA adapter)."""
        return self.run, *self.spec.batch_key()


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable: unknown_label, forbidden, queue_full, ...")
    message: str = Field(description="One line for a person.")
    field: str | None = Field(description="The request field (or header) at fault, if one is.")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx the API answers (404, 405 and 413 included)."""

    error: ErrorDetail


class ApiError(Exception):
    """An error a client caused (or a full queue): its status and ``{"error": {...}}`` body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}
