"""A client for ``udiff serve``: ``Client(url, key=...)`` with ``runs()``, ``generate(...)`` ->
images, ``submit(...)`` -> a job, ``wait(job)`` (its Server-Sent Events, no polling) and
``cancel(job)``. An error answer raises the :class:`ApiError` subclass of its status, carrying the
error body's ``code``, ``message`` and ``field``. Standard library only (PIL for the images).

One keep-alive connection per client: use one client per thread."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class ApiError(Exception):
    """The server answered an error: ``status`` and the body's ``code``, ``message``, ``field``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}" + (f" (field {field})" if field
                                                                else ""))
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after = retry_after


class InvalidRequest(ApiError):  # 400, 413, 422
    pass


class Unauthorized(ApiError):  # 401: no key, an unknown or a revoked one
    pass


class Forbidden(ApiError):  # 403: a run or label outside the key's scope
    pass


class NotFound(ApiError):  # 404: no such job (or another key's)
    pass


class Conflict(ApiError):  # 409: the job is already finished
    pass


class RateLimited(ApiError):  # 429: see retry_after
    pass


class Unavailable(ApiError):  # 503: queue full, loading, shutting down; see retry_after
    pass


class ServerError(ApiError):  # 5xx, or a job that failed
    pass


class Cancelled(ApiError):  # wait() on a job that was cancelled
    pass


BY_STATUS = {400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
             409: Conflict, 413: InvalidRequest, 422: InvalidRequest, 429: RateLimited,
             503: Unavailable}


@dataclass(frozen=True)
class Job:
    id: str
    status: str


@dataclass
class Result:
    """A generation's images (PIL, label-major) and how they were made; iterates as images."""

    images: list
    labels: list[int]
    label_names: list[str]
    seed: int
    steps: int
    sampler: str
    guidance: float
    timing: dict = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: dict) -> Result:
        from PIL import Image

        ims = body["images"]
        return cls([Image.open(io.BytesIO(base64.b64decode(im["png_base64"]))) for im in ims],
                   [im["label"] for im in ims], [im["label_name"] for im in ims], body["seed"],
                   body["steps"], body["sampler"], body["guidance"], body.get("timing", {}))

    def __iter__(self):
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", key: str | None = None,
                 timeout: float = 300.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {url!r}: http(s)://host[:port]")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.key, self.timeout = key, timeout
        self._conn: http.client.HTTPConnection | None = None

    # -- the API ---------------------------------------------------------------------------
    def runs(self) -> list[dict]:
        """The runs this key may use (with the labels it may use in each)."""
        return self._json("GET", "/v1/runs")["runs"]

    def generate(self, labels: list[int | str], **options) -> Result:
        """Wait for the images (``options``: run, per_label, steps, sampler, guidance,
        guidance_interval, guidance_rescale, seed)."""
        return Result.from_body(self._json("POST", "/v1/generate", body(labels, options)))

    def submit(self, labels: list[int | str], **options) -> Job:
        data = self._json("POST", "/v1/jobs", body(labels, options))
        return Job(data["id"], data["status"])

    def job(self, job: Job | str) -> dict:
        return self._json("GET", f"/v1/jobs/{job_id(job)}")

    def cancel(self, job: Job | str) -> dict:
        return self._json("DELETE", f"/v1/jobs/{job_id(job)}")

    def events(self, job: Job | str) -> Iterator[tuple[str, dict]]:
        """(event, data) as the server sends them, until the job is final."""
        conn = self._connect()  # its own connection: the stream holds it until the end
        try:
            conn.request("GET", f"/v1/jobs/{job_id(job)}/events", headers=self._headers())
            resp = conn.getresponse()
            if resp.status != 200:
                raise error_of(resp.status, resp.read(), resp.getheader("retry-after"))
            name, data = None, []
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if name is not None:
                        yield name, json.loads("\n".join(data) or "{}")
                    name, data = None, []
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
        finally:
            conn.close()

    def wait(self, job: Job | str, on_event: Callable[[str, dict], None] | None = None) -> Result:
        """The job's result, following its events (``on_event(name, data)`` sees each one);
        a failed job raises :class:`ServerError`, a cancelled one :class:`Cancelled`."""
        for name, data in self.events(job):
            if on_event is not None:
                on_event(name, data)
            if name == "succeeded":
                return Result.from_body(data)
            if name == "failed":
                raise ServerError(500, "generation_failed", data.get("error") or "failed")
            if name == "cancelled":
                raise Cancelled(409, "cancelled", f"job {job_id(job)} was cancelled")
        raise ServerError(502, "stream_ended", f"the events of job {job_id(job)} ended early")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- HTTP ------------------------------------------------------------------------------
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout)
        conn.connect()
        # headers and body go in two writes: without NODELAY, Nagle holds the body for the
        # server's delayed ACK (~40 ms a request)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _json(self, method: str, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request(method, path, body=data, headers=self._headers())
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        if resp.status >= 400:
            raise error_of(resp.status, raw, resp.getheader("retry-after"))
        return json.loads(raw)


def body(labels, options: dict) -> dict:
    return {"labels": list(labels), **{k: v for k, v in options.items() if v is not None}}


def job_id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else job


def error_of(status: int, raw: bytes, retry_after: str | None) -> ApiError:
    try:
        e = json.loads(raw)["error"]
        code, message, where = e["code"], e["message"], e.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, where = "http_error", raw[:200].decode(errors="replace"), None
    cls = BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, code, message, where, float(retry_after) if retry_after else None)
