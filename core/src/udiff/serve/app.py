"""The HTTP API (FastAPI): routes, bearer-token auth, the body limit and the error body
``{"error": {"code", "message", "field"}}``. The state behind it is :class:`Service`."""

from __future__ import annotations

import hmac
import json
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError

from ..version import __version__
from .schema import ApiError, GenerateRequest
from .service import Service

OPEN = ("/healthz",)  # the one route that needs no token (liveness probes carry none)
BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": GenerateRequest.model_json_schema()}}}}


def error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def parse(request: Request, service: Service) -> GenerateRequest:
    """The body as a :class:`GenerateRequest`; too large, malformed or invalid: the field named."""
    limit = service.limits.max_body_bytes
    too_large = ApiError(400, "body_too_large", f"the body is over {limit} bytes", "body")
    if int(request.headers.get("content-length") or 0) > limit:  # before reading it
        raise too_large
    raw = await request.body()
    if len(raw) > limit:  # a chunked body says no length
        raise too_large
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "malformed_json", f"the body is not JSON: {e}", "body") from None
    try:
        return GenerateRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        field = str(first["loc"][0]) if first["loc"] else "body"  # the top-level field
        raise ApiError(422, "invalid_value", f"{where or 'body'}: {first['msg']}", field) \
            from None


def create_app(service: Service, token: str | None = None) -> FastAPI:
    app = FastAPI(title="udiff", version=__version__, description="Generate images for a label "
                  "from trained udiff runs.")
    page = resources.files("udiff.serve").joinpath("page.html").read_text()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error(e)

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if token is not None and request.url.path not in OPEN:
            given = request.headers.get("authorization", "")
            if request.url.path == "/" and "token" in request.query_params:
                given = f"Bearer {request.query_params['token']}"  # the page: a link carries it
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(ApiError(401, "unauthorized", "this server needs "
                                      "'Authorization: Bearer <token>'", "Authorization",
                                      {"WWW-Authenticate": "Bearer"}))
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if service.draining or not service.ready.is_set():
            status = "draining" if service.draining else "loading"
            return JSONResponse({"status": status}, status_code=503)
        return {"status": "ready", "runs": list(service.runs), "jobs": service.job_counts()}

    @app.get("/v1/runs")
    async def runs():
        return service.describe()

    @app.post("/v1/generate", openapi_extra=BODY)
    async def generate(request: Request):
        job = service.submit(await parse(request, service), sync=True)
        await job.wait()
        if job.status != "succeeded":
            raise ApiError(500, "generation_failed", job.error or f"job {job.status}")
        if "image/png" in request.headers.get("accept", ""):
            return Response(service.grid_png(job), media_type="image/png")
        return service.result(job)

    @app.post("/v1/jobs", status_code=202, openapi_extra=BODY)
    async def submit(request: Request):
        job = service.submit(await parse(request, service), sync=False)
        return JSONResponse({"id": job.id, "status": job.status}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str):
        return service.view(service.jobs.get(job_id))

    @app.delete("/v1/jobs/{job_id}")
    async def cancel(job_id: str):
        job = service.jobs.get(job_id)
        service.cancel(job)
        return service.view(job)

    return app
