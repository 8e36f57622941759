"""The serving state behind the HTTP routes: runs, limits, queue, jobs, the worker, and the
drain on shutdown (stop accepting, finish what was accepted, let clients fetch it)."""

from __future__ import annotations

import base64
import io
import sys
import threading
import time

from ..images import grid, to_pil
from .audit import AuditLog
from .jobs import Job, JobQueue, JobStore
from .keys import Key, Keys
from .quota import Quotas
from .runs import ServedRun, warm_up
from .schema import ApiError, GenerateRequest, Limits
from .worker import Worker

UNAUTHORIZED = ApiError(401, "unauthorized", "this server needs 'Authorization: Bearer <key>'",
                        "Authorization", {"WWW-Authenticate": "Bearer"})


class Service:
    """``keys``: None serves everyone everything (127.0.0.1 without --keys-file/--token-file);
    else every request but /healthz names a key, and sees only that key's runs, labels, jobs."""

    def __init__(self, runs: dict[str, ServedRun], limits: Limits, keys: Keys | None = None,
                 audit: AuditLog | None = None) -> None:
        self.runs, self.limits, self.keys, self.audit = runs, limits, keys, audit
        self.queue, self.jobs = JobQueue(limits), JobStore(limits)
        self.worker = Worker(runs, self.queue)
        self.quotas = Quotas()
        self.ready = threading.Event()
        self.draining = False

    def labels(self) -> dict[str, list[str]]:
        """Each served run's label names (what a keys file is checked against)."""
        return {name: run.pipe.label_names for name, run in self.runs.items()}

    def authenticate(self, authorization: str) -> Key | None:
        if self.keys is None:
            return None
        scheme, _, secret = authorization.partition(" ")
        key = self.keys.find(secret) if scheme.lower() == "bearer" and secret else None
        if key is None:
            raise UNAUTHORIZED
        return key

    def scope(self, key: Key | None) -> dict[str, frozenset[int] | None]:
        return {name: None for name in self.runs} if key is None else key.scope

    def run(self) -> None:
        """Warm every run up (the server already answers /healthz), say ready, and work on this
        thread until the worker is stopped."""
        warm_up(self.runs)
        self.ready.set()
        print("udiff serve: ready", file=sys.stderr, flush=True)
        self.worker.run()

    def start(self) -> None:
        """:meth:`run` on a thread of its own (tests serve from a thread of their process)."""
        threading.Thread(target=self.run, name="udiff-serve-worker", daemon=True).start()

    def describe(self, key: Key | None) -> dict:
        return {"runs": [self.runs[name].describe(labels)
                         for name, labels in self.scope(key).items() if name in self.runs],
                "limits": self.limits.model_dump()}

    def job_counts(self) -> dict[str, int]:
        """Accepted jobs not yet final, by status (a load balancer's or a test's view)."""
        jobs = self.jobs.values()
        return {status: sum(j.status == status for j in jobs) for status in ("queued", "running")}

    def run_of(self, req: GenerateRequest, key: Key | None) -> ServedRun:
        scope = self.scope(key)
        if req.run is None and len(scope) == 1:
            return self.runs[next(iter(scope))]
        if key is not None and req.run not in scope:  # whether it exists is not this key's to know
            raise ApiError(403, "forbidden", f"key {key.name!r} may not use run {req.run!r}; its "
                           f"runs: {', '.join(key.runs())}", "run")
        if req.run not in self.runs:
            raise ApiError(422, "unknown_run", f"no run {req.run!r} here; served: "
                           f"{', '.join(self.runs)}", "run")
        return self.runs[req.run]

    def submit(self, req: GenerateRequest, sync: bool, key: Key | None = None) -> Job:
        if self.draining:
            raise ApiError(503, "shutting_down", "the server is shutting down; retry on "
                           "another replica", None, {"Retry-After": "5"})
        if not self.ready.is_set():
            raise ApiError(503, "not_ready", "the server is still loading its runs", None,
                           {"Retry-After": "1"})
        run = self.run_of(req, key)
        work = run.work(req, self.limits, self.scope(key)[run.name], key and key.name)
        if key is not None:
            self.quotas.take(key, work.images)
        job = Job(work, sync=sync, owner=key and key.name)
        self.queue.put(job)
        self.jobs.add(job)
        return job

    def job(self, job_id: str, key: Key | None) -> Job:
        """Another key's job is "no such job": ids do not tell that it exists."""
        job = self.jobs.get(job_id)
        if key is not None and job.owner != key.name:
            raise self.jobs.unknown(job_id)
        return job

    def cancel(self, job: Job) -> None:
        if job.done:
            raise ApiError(409, "finished", f"job {job.id} already {job.status}", "id")
        if self.queue.remove(job):
            job.finish("cancelled")
        else:  # running (or just taken): it leaves its batch at the next step
            job.cancel_requested.set()

    def view(self, job: Job) -> dict:
        out = {"id": job.id, "status": job.status, "step": job.step, "steps": job.work.spec.steps}
        if job.status == "succeeded":
            out["result"] = self.result(job)
            job.fetched = True
        if job.status == "failed":
            out["error"] = job.error
        return out

    def result(self, job: Job) -> dict:
        """The succeeded job's response, encoded once (clients poll; PNGs are not re-encoded)."""
        if job.result is None:
            job.result = self._encode(job)
        return job.result

    def _encode(self, job: Job) -> dict:
        w, names = job.work, self.runs[job.work.run].pipe.label_names
        s = w.spec
        return {"run": w.run, "seed": s.seed, "steps": s.steps, "sampler": s.sampler,
                "guidance": s.guidance, "guidance_interval": s.interval,
                "guidance_rescale": s.rescale, "images": [
                    {"label": label, "label_name": names[label], "png_base64": png_base64(im)}
                    for label, im in zip(w.labels, to_pil(job.images), strict=True)],
                "timing": job.timing()}

    def grid_png(self, job: Job) -> bytes:
        buf = io.BytesIO()
        grid(job.images, rows=len(job.work.labels) // job.work.per_label).save(buf, "PNG")
        return buf.getvalue()

    def drain(self, grace: float) -> None:
        """Stop accepting; wait (up to ``grace`` s) for every accepted job to finish and every
        finished async job to be fetched once; whatever is left is failed, and said."""
        self.draining = True
        deadline = time.monotonic() + grace
        jobs = self.jobs.values()
        print(f"udiff serve: draining: {sum(not j.done for j in jobs)} job(s) to finish "
              f"(grace {grace:.0f} s)", file=sys.stderr, flush=True)
        while time.monotonic() < deadline and not all(
                j.done and (j.sync or j.fetched or j.status != "succeeded") for j in jobs):
            time.sleep(0.05)
        unfinished = [j for j in jobs if not j.done]
        for job in unfinished:
            self.queue.remove(job)
            job.cancel_requested.set()
            job.finish("failed", error="the server shut down before this job finished")
        if unfinished:
            print(f"udiff serve: {len(unfinished)} job(s) did not finish within the grace "
                  "period and were failed", file=sys.stderr, flush=True)
        self.worker.stop.set()


def png_base64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()
