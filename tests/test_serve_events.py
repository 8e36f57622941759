"""A job's Server-Sent Events in order (a batched job, a cancelled one) and ``udiff.client``
against a live server on 127.0.0.1: results, events, cancel, typed errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from serving import Live

import udiff
from udiff.client import Cancelled, Client, Conflict, InvalidRequest, NotFound, Unauthorized

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def live(tiny_run):
    with Live([tiny_run], max_batch_images=16, linger_ms=20) as server:
        yield server


def running(client: Client, labels, steps: int = 100) -> str:
    """A long job, once the worker runs it (what comes next stays queued behind it)."""
    job = client.submit(labels, steps=steps, guidance=1.5)
    while client.job(job)["status"] == "queued":
        time.sleep(0.01)
    return job


def follow(client: Client, job, into: list) -> threading.Thread:
    t = threading.Thread(target=lambda: into.extend(client.events(job)), daemon=True)
    t.start()
    return t


def test_events_of_a_batched_job_and_a_cancelled_one(live):
    c = Client(live.url)
    blocker = running(c, [0])
    a = c.submit([1], steps=6, seed=1)
    b = c.submit([2], steps=6, seed=2)
    x = c.submit([3], steps=6, seed=3)
    seen_a, seen_x = [], []
    threads = [follow(Client(live.url), a, seen_a), follow(Client(live.url), x, seen_x)]
    deadline = time.monotonic() + 30
    while not (seen_a and seen_x):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert c.cancel(x)["status"] == "cancelled"  # while queued
    c.cancel(blocker)
    for t in threads:
        t.join(60)
    names = [n for n, _ in seen_a]
    assert seen_a[0] == ("queued", {"position": 0})  # first in line behind the blocker
    assert names[-1] == "succeeded" and set(names[1:-1]) == {"progress"}
    steps = [d["step"] for n, d in seen_a if n == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # in order, each once
    assert all(d["steps"] == 6 for n, d in seen_a if n == "progress")
    result = seen_a[-1][1]
    assert result["timing"]["batch_images"] == 2 and result["seed"] == 1  # a ran beside b
    assert seen_x == [("queued", {"position": 2}), ("cancelled", {})]
    assert c.job(b)["status"] == "succeeded"


def test_the_client_generates_waits_cancels_and_raises_typed_errors(live, tiny_run):
    with Client(live.url) as c:
        [run] = c.runs()
        assert run["name"] == tiny_run.name and run["label_indices"] == list(range(10))
        images = c.generate([4, "5"], per_label=2, steps=5, seed=11)
        assert images.labels == [4, 4, 5, 5] and images.seed == 11 and len(images) == 4
        want = udiff.load(tiny_run).sample([4, 5], 2, steps=5, seed=11)
        assert max(np.abs(np.asarray(g, int) - np.asarray(w, int)).max()
                   for g, w in zip(images, want, strict=True)) <= 1
        events = []
        result = c.wait(c.submit([6], steps=4, seed=2), on_event=lambda n, d: events.append(n))
        assert result.labels == [6] and events[-1] == "succeeded" and "progress" in events
        blocker = running(c, [0])
        queued = c.submit([7], steps=4)
        c.cancel(queued)
        with pytest.raises(Cancelled):
            c.wait(queued)
        c.cancel(blocker)
        with pytest.raises(Conflict):
            c.cancel(queued)  # already final
        with pytest.raises(InvalidRequest) as e:
            c.generate([99])
        assert (e.value.status, e.value.code, e.value.field) == (422, "unknown_label", "labels")
        with pytest.raises(InvalidRequest) as e:
            c.generate([0], steps=True)  # strict: a bool is not a step count
        assert e.value.field == "steps"
        with pytest.raises(NotFound) as e:
            c.job("no-such-job")
        assert e.value.code == "unknown_job"
        with pytest.raises(NotFound):
            list(c.events("no-such-job"))


def test_the_client_without_a_key_on_a_keyed_server(tiny_run):
    with Live([tiny_run], token="s3cret") as live:
        with pytest.raises(Unauthorized) as e:
            Client(live.url).runs()
        assert e.value.field == "Authorization"
        assert Client(live.url, key="s3cret").runs()[0]["name"] == tiny_run.name
