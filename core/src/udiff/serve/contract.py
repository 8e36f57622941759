"""The API's contract as its OpenAPI document states it: every response body's schema and every
status each route can answer, with the one error body. A schema-driven fuzzer (schemathesis,
tests/test_serve_contract.py) holds the server to it. Imports no FastAPI or torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .schema import ErrorBody, GenerateRequest, Limits

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Objective(BaseModel):
    scheduler: str
    family: str


class Defaults(BaseModel):
    steps: int
    sampler: str
    guidance: float


class RunInfo(BaseModel):
    name: str
    backbone: str
    objective: Objective
    labels: list[str] = Field(description="The names of the labels this key may use.")
    label_indices: list[int] = Field(description="Their indices (as `labels` in a request).")
    image_size: int
    image_channels: int
    lora: bool
    defaults: Defaults


class RunList(BaseModel):
    runs: list[RunInfo] = Field(description="The runs this key may use.")
    limits: Limits


class Image(BaseModel):
    label: int
    label_name: str
    png_base64: str


class Timing(BaseModel):
    queue_ms: float
    run_ms: float
    batch_images: int


class GenerateResult(BaseModel):
    run: str
    seed: int
    steps: int
    sampler: str
    guidance: float
    guidance_interval: tuple[float, float] | None
    guidance_rescale: float
    images: list[Image]
    timing: Timing


class JobAccepted(BaseModel):
    id: str
    status: JobStatus


class JobView(BaseModel):
    id: str
    status: JobStatus
    step: int
    steps: int
    result: GenerateResult | None = Field(None, description="Once succeeded.")
    error: str | None = Field(None, description="Once failed.")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    runs: list[str]
    jobs: dict[str, int]


class NotReady(BaseModel):
    status: Literal["loading", "draining"]


def header(description: str) -> dict:
    return {"description": description, "schema": {"type": "string"}}


RETRY = {"Retry-After": header("Seconds to wait before retrying.")}
ERRORS = {
    400: ("A body that is not JSON.", None),
    401: ("No key, or one this server does not know (or no longer: revoked).",
          {"WWW-Authenticate": header("Bearer")}),
    403: ("A run or label outside the key's scope; the message names the scope.", None),
    404: ("No such job, or another key's job.", None),
    409: ("The job is already finished.", None),
    413: ("The body is over the server's limit.", None),
    422: ("A field (or path parameter) is invalid for the schema, the run or the limits; "
          "`field` names it.", None),
    429: ("Over the key's requests per minute or images per day.", RETRY),
    500: ("The generation failed (the server goes on).", None),
    503: ("The queue is full, or the server is loading or shutting down.", RETRY),
}


def errors(*statuses: int) -> dict:
    out = {}
    for status in statuses:
        description, headers = ERRORS[status]
        out[status] = {"model": ErrorBody, "description": description}
        if headers:
            out[status]["headers"] = headers
    return out


def request_body(runs: dict[str, tuple[list[str], list[str]]], limits: Limits) -> dict:
    """The request schema of *this* server: ``runs`` (name -> (label names, samplers)) and the
    limits as enums and bounds, so that a body the schema accepts is one the server serves --
    but for what JSON Schema cannot say: labels x per_label <= max_images, and lo <= hi."""
    schema = GenerateRequest.model_json_schema()
    props = schema["properties"]
    labels = sorted({name for names, _ in runs.values() for name in names})
    top = max((len(names) for names, _ in runs.values()), default=1) - 1
    props["run"]["anyOf"][0] = {"type": "string", "enum": sorted(runs)}
    props["labels"]["items"] = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": top},
                                          {"type": "string", "enum": labels}]}
    props["labels"]["maxItems"] = props["per_label"]["maximum"] = limits.max_images
    props["steps"]["anyOf"][0]["maximum"] = limits.max_steps
    props["sampler"]["anyOf"][0] = {"type": "string", "enum": sorted(
        {s for _, samplers in runs.values() for s in samplers})}
    props["guidance"]["anyOf"][0]["maximum"] = limits.max_guidance
    for item in props["guidance_interval"]["anyOf"][0]["prefixItems"]:
        item.update(minimum=0, maximum=1)
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": schema}}}}


SUBMIT = (400, 401, 403, 413, 422, 429, 503)
PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
SSE = {"text/event-stream": {"schema": {  # before OpenAPI 3.2 `schema` describes each event
    "type": "object", "required": ["event", "data"], "properties": {
        "event": {"type": "string", "enum": ["queued", "progress", "succeeded", "failed",
                                             "cancelled"]},
        "data": {"type": "string", "contentMediaType": "application/json", "description":
                 "queued: {position}; progress: {step, steps}; succeeded: the result (as "
                 "GET /v1/jobs/{id} gives it); failed: {error}; cancelled: {}."}}}}}
LINKS = {name: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}}
         for name, op in (("job", "job"), ("cancel", "cancel"), ("events", "events"))}


def routes(body: dict) -> dict[str, dict]:
    """Each route's documented answers (FastAPI route keywords), ``body``: request_body()."""
    return {
        "healthz": {"responses": {}, "response_model": Health},
        "readyz": {"responses": {503: {"model": NotReady, "description": "Loading or draining."},
                                 **errors(401)}, "response_model": Ready},
        "runs": {"responses": errors(401), "response_model": RunList},
        "generate": {"responses": {200: {"content": PNG, "description": "The result (JSON), "
                                         "or with 'Accept: image/png' one PNG grid."},
                                   **errors(*SUBMIT, 500)},
                     "response_model": GenerateResult, "openapi_extra": body},
        "submit": {"responses": {202: {"headers": {"Location": header("The job's URL.")},
                                       "links": LINKS, "description": "Accepted: queued."},
                                 **errors(*SUBMIT)},
                   "response_model": JobAccepted, "status_code": 202, "openapi_extra": body},
        "job": {"responses": errors(401, 404, 422), "response_model": JobView},
        "cancel": {"responses": errors(401, 404, 409, 422), "response_model": JobView},
        "events": {"responses": {200: {"content": SSE, "description": "Server-Sent Events "
                                       "until the job is final."}, **errors(401, 404, 422)}},
    }


def secure(schema: dict, open_paths: tuple[str, ...]) -> dict:
    """The bearer scheme on every operation but the open ones (a server with keys)."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A key of --keys-file (or the --token-file token)."}}
    for path, operations in schema["paths"].items():
        if path not in open_paths:
            for op in operations.values():
                op["security"] = [{"bearer": []}]
    return schema
