"""``udiff serve``'s process: check and load the runs, bind the port, serve with uvicorn, and
drain on SIGTERM/SIGINT (stop accepting, finish what was accepted within the grace period,
exit 0; a second signal stops at once)."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

from ..errors import UdiffError
from . import runs as served
from .schema import Limits
from .service import Service


def require() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UdiffError("udiff serve needs the extra: pip install 'udiff-core[serve]'") from None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket's bind, before any run is announced ready (occupied: one line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UdiffError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror})") from None
    return sock


def read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise UdiffError(f"--token-file {path}: {e.strerror}") from None
    if not token:
        raise UdiffError(f"--token-file {path} is empty")
    return token


def make_server(service: Service, token: str | None, grace: float, log_level: str = "warning"):
    import uvicorn

    from .app import create_app

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # uvicorn's would drop queued jobs
            if service.draining:  # a second signal: stop now
                self.should_exit = self.force_exit = True
                return

            def drain():
                service.drain(grace)
                self.should_exit = True
            threading.Thread(target=drain, name="udiff-serve-drain", daemon=True).start()

    config = uvicorn.Config(create_app(service, token), log_level=log_level,
                            timeout_graceful_shutdown=5)
    return Server(config)


def serve(run_dirs: list[str], host: str, port: int, token_file: str | None, limits: Limits,
          device: str, grace: float) -> int:
    require()
    token = read_token(token_file)
    paths = served.check(run_dirs)
    device = served.device_of(device)
    sock = bind(host, port)  # before loading: an occupied port fails fast
    runs = served.load(paths, device)
    if host in ("0.0.0.0", "::") and token is None:
        print(f"udiff serve: warning: listening on {host} without --token-file: anyone who can "
              "reach this machine can use it", file=sys.stderr, flush=True)
    service = Service(runs, limits)
    server = make_server(service, token, grace)
    service.start()
    port = sock.getsockname()[1]
    print(f"udiff serve: http://{host}:{port}/ ({len(runs)} run(s); the API at /docs)",
          file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    print("udiff serve: stopped", file=sys.stderr, flush=True)
    return 0
