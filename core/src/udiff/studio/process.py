"""``udiff studio``'s process: the root made, keys read, the port bound, then uvicorn on a
thread and the serving worker on the main thread (as ``udiff serve``: PyTorch runs slower off
the thread that started it), the jobs' loop on a thread of its own."""

from __future__ import annotations

import sys
import threading
import time
from importlib import resources

from ..errors import UdiffError
from ..serve import keys as keyring
from ..serve import runs as served
from ..serve.process import bind, on_signals, require
from ..serve.schema import Limits
from ..serve.service import Service
from .paths import Root
from .studio import Studio

LOCAL = ("127.0.0.1", "localhost", "::1")
GRACE = 5.0  # seconds a generate job gets to finish when the studio stops


def studio(root: str, host: str, port: int, keys_file: str | None, device: str) -> int:
    require()
    import uvicorn

    from ..serve.app import create_app
    from .app import add_routes

    r = Root(root)
    if r.root.exists() and not r.root.is_dir():
        raise UdiffError(f"--root {root} exists and is not a directory")
    keys = keyring.load(keys_file, {}, strict=False) if keys_file else None
    if host not in LOCAL and keys is None:
        raise UdiffError(f"--host {host}: the studio starts training for whoever reaches it; "
                         "give --keys-file with an admin key (udiff keys add --admin)")
    device = served.device_of(device)
    sock = bind(host, port)  # before anything is written: an occupied port fails fast
    r.make()
    service = Service({}, Limits(), keys)
    reload_keys = (lambda: keyring.load(keys_file, service.labels(), strict=False)) \
        if keys_file else None
    state = Studio(r, service, device, reload_keys)
    page = resources.files("udiff.studio").joinpath("page.html").read_text()
    app = create_app(service, page=page)
    add_routes(app, state)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           timeout_graceful_shutdown=5))
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="udiff-http",
                            daemon=True)
    on_signals(service, server, GRACE)
    state.jobs.start()
    http.start()
    for _ in range(600):  # say the address once it answers (a test or a script goes there)
        if server.started or not http.is_alive():
            break
        time.sleep(0.05)
    print(f"udiff studio: http://{host}:{sock.getsockname()[1]}/ (root {r.root}, device "
          f"{device}{f', {len(keys)} key(s)' if keys else ''})", file=sys.stderr, flush=True)
    service.run()  # the serving worker, until a signal drains it
    state.jobs.stop()  # training children go on: a restarted studio finds them
    server.should_exit = True
    http.join(30)
    print("udiff studio: stopped", file=sys.stderr, flush=True)
    return 0
