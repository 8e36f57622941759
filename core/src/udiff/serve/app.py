"""The HTTP API (FastAPI): routes, keys, the body limit, the audit line, and one error body
``{"error": {"code", "message", "field"}}`` for every 4xx/5xx (404, 405, 413 and validation
included). What each route answers is stated in :mod:`.contract`; the state is :class:`Service`."""

from __future__ import annotations

import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..version import __version__
from .contract import request_body, routes, secure
from .events import stream
from .schema import ApiError, GenerateRequest
from .service import Service

OPEN = ("/healthz",)  # the one route that needs no key (liveness probes carry none)
CODES = {404: "not_found", 405: "method_not_allowed"}


def error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def parse(request: Request, service: Service) -> GenerateRequest:
    """The body as a :class:`GenerateRequest`; too large, malformed or invalid: the field named."""
    limit = service.limits.max_body_bytes
    too_large = ApiError(413, "body_too_large", f"the body is over {limit} bytes", "body")
    if int(request.headers.get("content-length") or 0) > limit:  # before reading it
        raise too_large
    raw = await request.body()
    if len(raw) > limit:  # a chunked body says no length
        raise too_large
    try:  # parsed once, from JSON: strict types as JSON has them ([lo, hi] is an array)
        return GenerateRequest.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, "malformed_json", f"the body is not JSON: {first['msg']}",
                           "body") from None
        raise invalid(e.errors()) from None


def invalid(errors: list) -> ApiError:
    first = errors[0]
    loc = [p for p in first["loc"] if p not in ("body", "path", "query")] or ["body"]
    where = ".".join(str(p) for p in loc)
    return ApiError(422, "invalid_value", f"{where}: {first['msg']}", str(loc[0]))


def allowed(app: FastAPI, scope: dict) -> str:
    """Every method some route takes at this path (Starlette names only the first route's)."""
    methods = set()
    for route in app.router.routes:
        if route.matches(scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def create_app(service: Service, page: str | None = None) -> FastAPI:
    """``page``: the HTML at ``/`` (``udiff studio``'s); default: the generate page."""
    app = FastAPI(title="udiff", version=__version__, description="Generate images for a label "
                  "from trained udiff runs; each key sees only its own runs, labels and jobs.")
    page = page or resources.files("udiff.serve").joinpath("page.html").read_text()
    ROUTES = routes(request_body({n: (r.pipe.label_names, r.samplers())  # noqa: N806
                                  for n, r in service.runs.items()}, service.limits))
    for name, route in ROUTES.items():
        route["operation_id"] = name  # what the 202's links name

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        headers = {"Allow": allowed(app, request.scope)} if e.status_code == 405 else None
        return error(ApiError(e.status_code, CODES.get(e.status_code, "http_error"),
                              f"{request.method} {request.url.path}: {e.detail}", None, headers))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        return error(invalid(e.errors()))

    @app.middleware("http")
    async def auth(request: Request, call_next):
        request.state.key = None
        if service.keys is not None and request.url.path not in OPEN:
            given = request.headers.get("authorization", "")
            if request.url.path == "/" and "token" in request.query_params:
                given = f"Bearer {request.query_params['token']}"  # the page: a link carries it
            try:
                request.state.key = service.authenticate(given)
            except ApiError as e:
                return error(e)
        return await call_next(request)

    openapi = app.openapi

    def documented() -> dict:
        if app.openapi_schema is None and service.keys is not None:
            secure(openapi(), OPEN)
        return openapi()

    app.openapi = documented

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/healthz", **ROUTES["healthz"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", **ROUTES["readyz"])
    async def readyz(request: Request):
        if service.draining or not service.ready.is_set():
            status = "draining" if service.draining else "loading"
            return JSONResponse({"status": status}, status_code=503)
        return {"status": "ready", "runs": list(service.scope(request.state.key)),
                "jobs": service.job_counts()}

    @app.get("/v1/runs", **ROUTES["runs"])
    async def runs(request: Request):
        return service.describe(request.state.key)

    async def accept(request: Request, sync: bool):
        """Parse, submit (and for ``sync`` wait); the audit line says how it ended."""
        start, req, job, status = time.perf_counter(), None, None, 500
        try:
            req = await parse(request, service)
            job = service.submit(req, sync=sync, key=request.state.key)
            if sync:
                await job.wait()
                if job.status != "succeeded":
                    raise ApiError(500, "generation_failed", job.error or f"job {job.status}")
            status = 200 if sync else 202
            return job
        except ApiError as e:
            status = e.status
            raise
        finally:
            if service.audit is not None and req is not None:
                key = request.state.key
                w = job.work if job else None
                service.audit.write(
                    key=key and key.name, run=w.run if w else req.run,
                    labels=list(dict.fromkeys(w.labels)) if w else req.labels,
                    images=w.images if w else None, seed=w.spec.seed if w else req.seed,
                    status=status, ms=(time.perf_counter() - start) * 1000)

    @app.post("/v1/generate", **ROUTES["generate"])
    async def generate(request: Request):
        job = await accept(request, sync=True)
        if "image/png" in request.headers.get("accept", ""):
            return Response(service.grid_png(job), media_type="image/png")
        return service.result(job)

    @app.post("/v1/jobs", **ROUTES["submit"])
    async def submit(request: Request):
        job = await accept(request, sync=False)
        return JSONResponse({"id": job.id, "status": job.status}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs/{job_id}", **ROUTES["job"])
    async def job(job_id: str, request: Request):
        return service.view(service.job(job_id, request.state.key))

    @app.delete("/v1/jobs/{job_id}", **ROUTES["cancel"])
    async def cancel(job_id: str, request: Request):
        job = service.job(job_id, request.state.key)
        service.cancel(job)
        return service.view(job)

    @app.get("/v1/jobs/{job_id}/events", **ROUTES["events"])
    async def events(job_id: str, request: Request):
        job = service.job(job_id, request.state.key)
        return StreamingResponse(stream(service, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app
