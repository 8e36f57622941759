"""``GET /v1/jobs/{id}/events``: a job's progress as Server-Sent Events, sent as it changes (the
worker wakes the stream; nothing polls): ``queued`` {position} whenever it moves up the queue,
``progress`` {step, steps} at every step, then one of ``succeeded`` (the result, as
``GET /v1/jobs/{id}`` gives it), ``failed`` {error} or ``cancelled`` {}; then the stream ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from .jobs import Job


def event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def state(service, job: Job) -> tuple[str, dict] | None:
    if job.status == "queued":
        position = service.queue.position(job)
        return None if position is None else ("queued", {"position": position})  # None: taken
    if job.status == "running":
        return "progress", {"step": job.step, "steps": job.work.spec.steps}
    if job.status == "succeeded":
        job.fetched = True
        return "succeeded", service.result(job)
    return job.status, {"error": job.error} if job.status == "failed" else {}


async def stream(service, job: Job) -> AsyncIterator[str]:
    last = None
    while True:
        version = job.version  # before reading the state: a change in between wakes us at once
        now = state(service, job)
        if now is not None and now != last:
            yield event(*now)
            last = now
        if job.done:
            return
        await job.next_change(version)
