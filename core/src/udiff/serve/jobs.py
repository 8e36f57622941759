"""Jobs, the bounded queue the worker batches from, and the bounded store of finished jobs.

Threads: HTTP handlers run on the event loop, the worker on its own thread; a job's fields are
written by one side at a time and read under the GIL, and waiters are woken through their loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict, deque

from .schema import ApiError, Limits, Work

FINAL = ("succeeded", "failed", "cancelled")


class Job:
    def __init__(self, work: Work, sync: bool = False, owner: str | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.work, self.sync, self.owner = work, sync, owner  # owner: the key's name
        self.version = 0  # bumped on every change a watcher sees (start, step, finish)
        self.status, self.step, self.error = "queued", 0, None
        self.images = None  # [N, C, H, W] in [-1, 1] once succeeded
        self.result: dict | None = None  # its response body, built on first read
        self.batch_images = 0
        self.cancel_requested = threading.Event()
        self.fetched = False  # an async result was read at least once (drain waits for it)
        self.submitted, self.started, self.finished = time.monotonic(), None, None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self.status in FINAL

    def start(self, batch_images: int) -> None:
        self.status, self.started, self.batch_images = "running", time.monotonic(), batch_images
        self.changed()

    def advance(self, step: int) -> None:
        self.step = step
        self.changed()

    def finish(self, status: str, images=None, error: str | None = None) -> None:
        with self._lock:
            if self.done:
                return
            self.images, self.error, self.finished = images, error, time.monotonic()
            self.status = status
        self.changed()

    def changed(self) -> None:
        """Wake whoever waits on this job (from any thread: each waiter is woken in its loop)."""
        with self._lock:
            self.version += 1
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_result(None))

    async def next_change(self, version: int) -> None:
        """Until the job differs from ``version`` (an asyncio wait: no thread per watcher)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self.version != version:
                return
            self._waiters.append((loop, future))
        await future

    async def wait(self) -> None:
        """Until the job is final."""
        while True:
            version = self.version  # read before `done`: a finish in between bumps it
            if self.done:
                return
            await self.next_change(version)

    def timing(self) -> dict:
        started = self.started or self.finished or time.monotonic()
        end = self.finished or time.monotonic()
        return {"queue_ms": round((started - self.submitted) * 1000, 1),
                "run_ms": round((end - started) * 1000, 1) if self.started else 0.0,
                "batch_images": self.batch_images}


class JobQueue:
    """Jobs waiting for the worker, oldest first; at most ``max_queue`` of them."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self.last_end = 0.0  # when the worker finished its last batch (monotonic)

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        with self._cond:
            if len(self._jobs) >= self.limits.max_queue:
                raise ApiError(503, "queue_full", f"the queue is full ({self.limits.max_queue} "
                               "jobs waiting); retry later", None, {"Retry-After": "1"})
            self._jobs.append(job)
            self._cond.notify_all()

    def remove(self, job: Job) -> bool:
        with self._cond:
            try:
                self._jobs.remove(job)
                return True
            except ValueError:
                return False

    def take(self, timeout: float = 0.1) -> list[Job]:
        batch = self._take(timeout)
        if batch:
            for job in list(self._jobs):  # each moved up the queue: watchers see the position
                job.changed()
        return batch

    def _take(self, timeout: float) -> list[Job]:
        """The oldest job and the queued jobs that can share its batch (same run, steps,
        sampler, guidance) up to ``max_batch_images``, waiting ``linger_ms`` for more while the
        batch is not full -- only under load (others queued, or this job waited for the last
        batch): a lone client pays no linger. [] if nothing came within ``timeout``."""
        cap, linger = self.limits.max_batch_images, self.limits.linger_ms / 1000
        with self._cond:
            if not self._jobs and not self._cond.wait_for(lambda: self._jobs, timeout):
                return []
            batch = [self._jobs.popleft()]
            if batch[0].work.stochastic:
                return batch
            key, size = batch[0].work.batch_key(), batch[0].work.images
            if not self._jobs and batch[0].submitted > self.last_end:
                linger = 0.0
            deadline = time.monotonic() + linger
            while size < cap:
                for job in list(self._jobs):
                    w = job.work
                    if not w.stochastic and w.batch_key() == key and size + w.images <= cap:
                        self._jobs.remove(job)
                        batch.append(job)
                        size += w.images
                left = deadline - time.monotonic()
                if size >= cap or left <= 0:
                    break
                self._cond.wait(left)
            return batch

    def position(self, job: Job) -> int | None:
        """Jobs ahead of ``job`` (None: not queued)."""
        with self._cond:
            try:
                return self._jobs.index(job)
            except ValueError:
                return None


class JobStore:
    """Every job by id; finished ones are kept ``job_ttl_s`` and at most ``max_finished_jobs``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def add(self, job: Job) -> None:
        self.prune()
        self._jobs[job.id] = job

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise self.unknown(job_id)
        return job

    def unknown(self, job_id: str) -> ApiError:
        return ApiError(404, "unknown_job", f"no job {job_id!r} here (finished jobs are kept "
                        f"{self.limits.job_ttl_s:.0f} s; job ids belong to the replica and the "
                        "key that made them)", "id")

    def values(self) -> list[Job]:
        return list(self._jobs.values())

    def prune(self) -> None:
        now = time.monotonic()
        finished = [j for j in self._jobs.values() if j.done]
        extra = len(finished) - self.limits.max_finished_jobs
        for i, job in enumerate(finished):
            if i < extra or now - job.finished > self.limits.job_ttl_s:
                del self._jobs[job.id]
