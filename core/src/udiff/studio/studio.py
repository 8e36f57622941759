"""The studio's state and actions behind its routes: the root, the jobs, the serving
``Service`` whose runs grow as runs are served from the page."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from ..errors import UdiffError
from ..run.layout import RUN_FILE
from ..serve.schema import ApiError
from . import form
from .jobs import Jobs
from .paths import Root
from .runs import describe, last_lines, log_rows

PLAN_SECONDS = 600  # the plan's timed probe of a big preset on CPU
COMPARE_BACKBONES = (2, 6)
OUTPUT_LINES = 12  # of a child's output on the page


class Studio:
    def __init__(self, root: Root, service, device: str, reload_keys=None) -> None:
        self.root, self.service, self.device = root, service, device
        self.reload_keys = reload_keys  # () -> Keys: the keys file resolved on the served runs
        self.jobs = Jobs(root)
        self.reports: dict[Path, tuple[float, dict]] = {}

    @staticmethod
    async def in_thread(fn, *args):
        return await run_in_threadpool(fn, *args)

    # -- the page's view -------------------------------------------------------------------
    def state(self) -> dict:
        r = self.root
        data = [{"name": p.name, "labels": sum(1 for q in p.iterdir() if q.is_dir())}
                for p in sorted(r.data.iterdir()) if p.is_dir()]
        jobs = self.jobs.all()
        names = {p.name for p in r.runs.iterdir() if p.is_dir()} | {
            j.name for j in jobs if j.kind == "train"}
        runs = [self.run_view(r.runs / n) for n in sorted(names)]
        compares = sorted({p.name for p in r.compare.iterdir() if p.is_dir()} | {
            j.name for j in jobs if j.kind == "compare"})
        return {"data": data, "runs": runs, "compare": [self.comparison(r.compare / n, brief=True)
                                                        for n in compares],
                "queue": [j.view() for j in self.jobs.queue()], "served": sorted(
                    self.service.runs), "device": self.device}

    def run_view(self, run: Path) -> dict:
        job = self.jobs.get("train", run.name)
        return describe(run, job, self.jobs.output("train", run.name),
                        job and self.jobs.position(job)) | {"served": run.name in
                                                            self.service.runs}

    def watch(self, run: Path, since: int) -> dict:
        if not run.exists() and self.jobs.get("train", run.name) is None:
            raise ApiError(404, "not_found", f"name: no run {run.name!r}", "name")
        return self.run_view(run) | {"since": since, "log": log_rows(run, since),
                                     "output": last_lines(self.jobs.output("train", run.name),
                                                          OUTPUT_LINES)}

    # -- Data ------------------------------------------------------------------------------
    def report(self, folder: Path) -> dict:
        """``udiff data``'s report of a folder, made once per change of the folder."""
        from ..data_report import scan

        if not folder.is_dir():
            raise ApiError(404, "not_found", f"data: no folder {folder.name!r} under "
                           f"{self.root.data}", "data")
        stamp = max([folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.iterdir()])
        cached = self.reports.get(folder)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            report = scan(folder, f"data {folder.name}", strict=True)
        except UdiffError as e:
            raise ApiError(422, "bad_data", f"data: {e}", "data") from None
        self.reports[folder] = (stamp, report)
        return report

    def sheet(self, folder: Path) -> bytes:
        from ..data_report import contact_sheet

        buf = io.BytesIO()
        contact_sheet(self.report(folder)).save(buf, format="PNG")
        return buf.getvalue()

    # -- Train -----------------------------------------------------------------------------
    def train_argv(self, given: dict) -> tuple[str, list[str]]:
        """The body's name, data folder and form values, checked -> (name, udiff train argv)."""
        name = given.get("name")
        run = self.root.named(self.root.runs, name, "name")
        data = self.root.named(self.root.data, given.get("data"), "data")
        values = form.check(given.get("values", {}))
        self.report(data)  # a folder the report refuses is refused here, one line
        return name, ["train", "--data", str(data), "--out", str(run), "--device", self.device,
                      *form.argv(values)]

    def plan(self, given: dict) -> dict:
        """The choices the run's plan makes from the data and its time estimate, from
        ``udiff train --plan-only`` in a child (the probe's compute stays out of the studio)."""
        _, argv = self.train_argv(given)
        proc = subprocess.run([sys.executable, "-m", "udiff", *argv, "--plan-only"],
                              capture_output=True, text=True, timeout=PLAN_SECONDS,
                              cwd=self.root.root)
        if proc.returncode != 0:
            raise refused(proc.stderr)
        return json.loads(proc.stdout)

    def start(self, given: dict) -> dict:
        name, argv = self.train_argv(given)
        run = self.root.runs / name
        if run.exists() and any(run.iterdir()):
            raise ApiError(409, "exists", f"name: run {name!r} exists; choose another name "
                           "(or resume it)", "name")
        return self.jobs.submit("train", name, argv, self.device).view()

    def resume(self, run: Path) -> dict:
        job = self.jobs.get("train", run.name)
        view = self.run_view(run)
        if job is None or not view["resumable"]:
            raise ApiError(409, "not_resumable", f"name: run {run.name!r} is {view['state']}, "
                           "not stopped at a checkpoint", "name")
        argv = [a for a in job.argv if a != "--resume"] + ["--resume"]
        return self.jobs.submit("train", run.name, argv, job.device).view()

    # -- Use -------------------------------------------------------------------------------
    def serve(self, run: Path) -> dict:
        """Load a finished run into the server (once); its keys are resolved again."""
        from ..serve.runs import load

        finished(run)
        if run.name not in self.service.runs:
            loaded = load([run], self.device, self.service.limits)
            self.service.runs.update(loaded)
            if self.reload_keys is not None:
                self.service.keys = self.reload_keys()
        return self.service.runs[run.name].describe()

    def distill(self, run: Path, given: dict) -> dict:
        steps = given.get("steps", 4)
        if type(steps) is not int or not 1 <= steps <= 8:
            raise ApiError(422, "invalid_value", "steps: a whole number from 1 to 8", "steps")
        finished(run)
        name = f"{run.name}-{steps}step"
        student = self.root.named(self.root.runs, name, "name")
        if student.exists():
            raise ApiError(409, "exists", f"name: run {name!r} exists", "name")
        return self.jobs.submit("train", name, ["distill", str(run), "--steps", str(steps),
                                                "--out", str(student)], self.device).view()

    def export(self, run: Path) -> dict:
        finished(run)
        out = self.root.named(self.root.exports, run.name, "name")
        lora = json.loads((run / "denoiser" / "config.json").read_text()).get("lora")
        argv = ["export", str(run), "--out", str(out), "--overwrite",
                *(["--merge-lora"] if lora else [])]
        return self.jobs.submit("export", run.name, argv, "export").view()

    # -- Compare ---------------------------------------------------------------------------
    def compare(self, given: dict) -> dict:
        name = given.get("name")
        out = self.root.named(self.root.compare, name, "name")
        data = self.root.named(self.root.data, given.get("data"), "data")
        backbones = given.get("backbones")
        lo, hi = COMPARE_BACKBONES
        if not isinstance(backbones, list) or not lo <= len(backbones) <= hi or not all(
                isinstance(b, str) and b for b in backbones):
            raise ApiError(422, "invalid_value", f"backbones: a list of {lo} to {hi} names",
                           "backbones")
        steps = given.get("budget_steps", 200)
        if type(steps) is not int or steps < 1:
            raise ApiError(422, "invalid_value", "budget_steps: a whole number >= 1",
                           "budget_steps")
        if out.exists():
            raise ApiError(409, "exists", f"name: comparison {name!r} exists", "name")
        self.report(data)
        argv = ["compare", "--data", str(data), "--out", str(out), "--backbones",
                ",".join(backbones), "--budget-steps", str(steps)]
        for key, flag in (("preset", "--preset"), ("per_label", "--per-label")):
            if given.get(key) is not None:
                argv += [flag, str(given[key])]
        return self.jobs.submit("compare", name, argv, self.device).view()

    def comparison(self, folder: Path, brief: bool = False) -> dict:
        job = self.jobs.get("compare", folder.name)
        decision, output = folder / "decision.json", self.jobs.output("compare", folder.name)
        failed = job is not None and job.returncode not in (None, 0) and not job.cancelled
        out = {"name": folder.name, "status": job.status if job else "found",
               "returncode": job.returncode if job else None, "finished": decision.is_file(),
               "error": (last_lines(output, 1) or [None])[0] if failed else None}
        if brief:
            return out
        pictures = [p.relative_to(folder).as_posix() for p in
                    [folder / "decision.png", *sorted((folder / "measured").glob("*.png"))]
                    if p.is_file()]
        table = folder / "decision.md"
        return out | {"decision": json.loads(decision.read_text()) if decision.is_file() else
                      None, "table": table.read_text() if table.is_file() else None,
                      "pictures": pictures, "output": last_lines(output, OUTPUT_LINES)}


def finished(run: Path) -> None:
    if not (run / RUN_FILE).is_file():
        raise ApiError(409, "not_finished", f"name: run {run.name!r} has not finished", "name")


def refused(stderr: str) -> ApiError:
    """A child's one error line, with the form field its flag names (or ``values``)."""
    line = next((x for x in reversed(stderr.splitlines()) if x.strip()), "udiff train failed")
    line = line.removeprefix("udiff: error: ").removeprefix("error: ")
    field = next((f.path for f in form.FLAGS.values() if f.flag in line), "values")
    return ApiError(422, "refused", line, field)
