"""The studio's routes, added to ``udiff serve``'s FastAPI app (its keys, error body and
generate routes): ``/studio/data`` (Data), ``/studio/form`` + ``/studio/runs`` (Train, Watch),
``/studio/runs/{name}/serve|distill|export`` (Use), ``/studio/compare`` (Compare). With keys,
every studio route needs an admin key (``admin = true`` in keys.toml); generating is scoped as
on ``udiff serve``. Heavy work never runs here: training, distilling, exporting and comparing
are child processes (:mod:`.jobs`); the data report and serving a finished run run here."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response

from ..serve.schema import ApiError
from . import form
from .studio import Studio

PNG = {"media_type": "image/png", "headers": {"Cache-Control": "no-cache"}}


def admin(studio: Studio):
    """The dependency of every studio route: with keys, an admin key."""
    def check(request: Request) -> None:
        key = request.state.key
        if studio.service.keys is not None and not (key and key.admin):
            raise ApiError(403, "forbidden", "the studio needs an admin key (admin = true in the "
                           "keys file)", "Authorization")
    return check


def picture(folder: Path, path: str, root, what: str) -> FileResponse:
    """A PNG below ``folder`` (confined to it) or a 404 naming ``path``."""
    found = root.file(folder, path, "path")
    if found.suffix != ".png" or not found.is_file():
        raise ApiError(404, "not_found", f"path: {path!r} is not a picture of {what}", "path")
    return FileResponse(found, **PNG)


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
    router = APIRouter(dependencies=[Depends(admin(studio))], include_in_schema=False)

    @router.get("/studio/state")
    def state():
        return studio.state()

    # -- Data ------------------------------------------------------------------------------
    @router.get("/studio/data/{name}")
    def data_report(name: str):
        return studio.report(root.named(root.data, name, "data"))

    @router.get("/studio/data/{name}/sheet.png")
    def data_sheet(name: str):
        return Response(studio.sheet(root.named(root.data, name, "data")), **PNG)

    # -- Train and Watch -------------------------------------------------------------------
    @router.get("/studio/form")
    def train_form():
        return {"fields": form.fields(), "device": studio.device}

    @router.post("/studio/plan")
    async def plan(request: Request):
        given = await body(request)
        return await studio.in_thread(studio.plan, given)

    @router.post("/studio/runs", status_code=202)
    async def start(request: Request):
        return studio.start(await body(request))

    @router.get("/studio/runs/{name}")
    def watch(name: str, since: int = 0):
        return studio.watch(root.named(root.runs, name, "name"), since)

    @router.get("/studio/runs/{name}/files/{path:path}")
    def run_file(name: str, path: str):
        return picture(root.named(root.runs, name, "name"), path, root, f"run {name!r}")

    @router.delete("/studio/runs/{name}")
    def cancel(name: str):
        root.named(root.runs, name, "name")
        return studio.jobs.cancel("train", name).view()

    @router.post("/studio/runs/{name}/resume", status_code=202)
    def resume(name: str):
        return studio.resume(root.named(root.runs, name, "name"))

    # -- Use -------------------------------------------------------------------------------
    @router.post("/studio/runs/{name}/serve")
    async def serve(name: str):
        return await studio.in_thread(studio.serve, root.named(root.runs, name, "name"))

    @router.post("/studio/runs/{name}/distill", status_code=202)
    async def distill(name: str, request: Request):
        return studio.distill(root.named(root.runs, name, "name"), await body(request))

    @router.post("/studio/runs/{name}/export", status_code=202)
    def export(name: str):
        return studio.export(root.named(root.runs, name, "name"))

    # -- Compare ---------------------------------------------------------------------------
    @router.post("/studio/compare", status_code=202)
    async def compare(request: Request):
        return studio.compare(await body(request))

    @router.get("/studio/compare/{name}")
    def comparison(name: str):
        return studio.comparison(root.named(root.compare, name, "name"))

    @router.delete("/studio/compare/{name}")
    def stop_comparison(name: str):
        root.named(root.compare, name, "name")
        return studio.jobs.cancel("compare", name).view()

    @router.get("/studio/compare/{name}/files/{path:path}")
    def compare_file(name: str, path: str):
        return picture(root.named(root.compare, name, "name"), path, root,
                       f"comparison {name!r}")

    app.include_router(router)

