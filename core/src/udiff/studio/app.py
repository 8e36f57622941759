"""The studio's routes, added to ``udiff serve``'s FastAPI app (its keys, error body and
generate routes): ``/studio/data`` (Data), ``/studio/form`` + ``/studio/runs`` (Train, Watch),
``/studio/runs/{name}/serve|distill|export`` (Use), ``/studio/compare`` (Compare). With keys,
every studio route needs an admin key (``admin = true`` in keys.toml); generating is scoped as
on ``udiff serve``. Heavy work never runs here: training, distilling, exporting and comparing
are child processes (:mod:`.jobs`); the data report and serving a finished run run here."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response

from ..errors import UdiffError
from ..run.layout import RUN_FILE
from ..serve.schema import ApiError
from . import form
from .studio import Studio

PNG = {"media_type": "image/png", "headers": {"Cache-Control": "no-cache"}}


def admin(request: Request, studio: Studio) -> None:
    key = request.state.key
    if studio.service.keys is not None and not (key and key.admin):
        raise ApiError(403, "forbidden", "the studio needs an admin key (admin = true in the "
                       "keys file)", "Authorization")


async def body(request: Request) -> dict:
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, "malformed_json", "the body is not JSON", "body") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_value", "body: a JSON object", "body")
    return data


def add_routes(app: FastAPI, studio: Studio) -> None:
    root = studio.root

    @app.get("/studio/state", include_in_schema=False)
    def state(request: Request):
        admin(request, studio)
        return studio.state()

    # -- Data ------------------------------------------------------------------------------
    @app.get("/studio/data/{name}", include_in_schema=False)
    def data_report(name: str, request: Request):
        admin(request, studio)
        return studio.report(root.named(root.data, name, "data"))

    @app.get("/studio/data/{name}/sheet.png", include_in_schema=False)
    def data_sheet(name: str, request: Request):
        admin(request, studio)
        return Response(studio.sheet(root.named(root.data, name, "data")), **PNG)

    # -- Train and Watch -------------------------------------------------------------------
    @app.get("/studio/form", include_in_schema=False)
    def train_form(request: Request):
        admin(request, studio)
        return {"fields": form.fields(), "device": studio.device}

    @app.post("/studio/plan", include_in_schema=False)
    async def plan(request: Request):
        admin(request, studio)
        given = await body(request)
        return await studio.in_thread(studio.plan, given)

    @app.post("/studio/runs", include_in_schema=False, status_code=202)
    async def start(request: Request):
        admin(request, studio)
        return studio.start(await body(request))

    @app.get("/studio/runs/{name}", include_in_schema=False)
    def watch(name: str, request: Request, since: int = 0):
        admin(request, studio)
        return studio.watch(root.named(root.runs, name, "name"), since)

    @app.get("/studio/runs/{name}/files/{path:path}", include_in_schema=False)
    def run_file(name: str, path: str, request: Request):
        admin(request, studio)
        run = root.named(root.runs, name, "name")
        found = root.file(run, path, "path")
        if found.suffix != ".png" or not found.is_file():
            raise ApiError(404, "not_found", f"path: {path!r} is not a picture of run {name!r}",
                           "path")
        return FileResponse(found, **PNG)

    @app.delete("/studio/runs/{name}", include_in_schema=False)
    def cancel(name: str, request: Request):
        admin(request, studio)
        root.named(root.runs, name, "name")
        return studio.jobs.cancel("train", name).view()

    @app.post("/studio/runs/{name}/resume", include_in_schema=False, status_code=202)
    def resume(name: str, request: Request):
        admin(request, studio)
        return studio.resume(root.named(root.runs, name, "name"))

    # -- Use -------------------------------------------------------------------------------
    @app.post("/studio/runs/{name}/serve", include_in_schema=False)
    async def serve(name: str, request: Request):
        admin(request, studio)
        run = root.named(root.runs, name, "name")
        if not (run / RUN_FILE).is_file():
            raise ApiError(409, "not_finished", f"name: run {name!r} has not finished", "name")
        return await studio.in_thread(studio.serve, run)

    @app.post("/studio/runs/{name}/distill", include_in_schema=False, status_code=202)
    async def distill(name: str, request: Request):
        admin(request, studio)
        return studio.distill(root.named(root.runs, name, "name"), await body(request))

    @app.post("/studio/runs/{name}/export", include_in_schema=False, status_code=202)
    def export(name: str, request: Request):
        admin(request, studio)
        return studio.export(root.named(root.runs, name, "name"))

    # -- Compare ---------------------------------------------------------------------------
    @app.post("/studio/compare", include_in_schema=False, status_code=202)
    async def compare(request: Request):
        admin(request, studio)
        return studio.compare(await body(request))

    @app.get("/studio/compare/{name}", include_in_schema=False)
    def comparison(name: str, request: Request):
        admin(request, studio)
        return studio.comparison(root.named(root.compare, name, "name"))

    @app.delete("/studio/compare/{name}", include_in_schema=False)
    def stop_comparison(name: str, request: Request):
        admin(request, studio)
        root.named(root.compare, name, "name")
        return studio.jobs.cancel("compare", name).view()

    @app.get("/studio/compare/{name}/files/{path:path}", include_in_schema=False)
    def compare_file(name: str, path: str, request: Request):
        admin(request, studio)
        folder = root.named(root.compare, name, "name")
        found = root.file(folder, path, "path")
        if found.suffix != ".png" or not found.is_file():
            raise ApiError(404, "not_found", f"path: {path!r} is not a picture of comparison "
                           f"{name!r}", "path")
        return FileResponse(found, **PNG)


def user_error(e: UdiffError, field: str) -> ApiError:
    """A udiff error (a data folder the report refuses, say) as the page's one line."""
    return ApiError(422, "invalid_value", f"{field}: {e}", field)
