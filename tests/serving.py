"""A real uvicorn server on 127.0.0.1 (a thread of the test process, so a test can reach into its
worker), and a plain HTTP client for it."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time

import numpy as np
from PIL import Image

from udiff.serve import runs as served
from udiff.serve.process import bind, load_keys, make_server
from udiff.serve.schema import Limits
from udiff.serve.service import Service


class Live:
    def __init__(self, run_dirs, token: str | None = None, keys_file=None, audit=None,
                 **limits) -> None:
        runs = served.load(run_dirs)
        keys = load_keys(keys_file, token, {n: r.pipe.label_names for n, r in runs.items()})
        self.service = Service(runs, Limits(**limits), keys, audit)
        self.server = make_server(self.service)
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        self.service.start()
        wait_ready(self.port, path="/healthz")  # /readyz may need a key
        assert self.service.ready.wait(120)

    def __enter__(self) -> Live:
        return self

    def __exit__(self, *exc) -> None:
        self.service.worker.stop.set()
        self.server.should_exit = True
        self.thread.join(10)

    def call(self, method: str, path: str, body=None, headers: dict | None = None):
        return call(self.port, method, path, body, headers)


def call(port: int, method: str, path: str, body=None, headers: dict | None = None,
         timeout: float = 120):
    """(status, headers, JSON or bytes); ``body``: a dict (sent as JSON) or raw bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    if isinstance(body, dict | list):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json",
                                                     **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.getheader("content-type", "").startswith("application/json"):
        data = json.loads(data)
    return resp.status, dict(resp.getheaders()), data


def wait_ready(port: int, headers: dict | None = None, timeout: float = 120,
               path: str = "/readyz") -> None:
    """Until ``path`` answers 200 (/healthz: up; /readyz: its runs loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if call(port, "GET", path, headers=headers, timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server on port {port}: {path} not 200 in {timeout} s")


def decode(result: dict) -> np.ndarray:
    """The response's images as ``[N, H, W(, C)]`` uint8."""
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(im["png_base64"]))))
                     for im in result["images"]])


def poll(live_or_port, job_id: str, timeout: float = 120, headers: dict | None = None) -> dict:
    port = getattr(live_or_port, "port", live_or_port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, job = call(port, "GET", f"/v1/jobs/{job_id}", headers=headers)
        assert status == 200, job
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise TimeoutError(job_id)
