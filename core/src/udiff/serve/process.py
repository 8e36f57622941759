"""``udiff serve``'s process: check and load the runs and keys, bind the port, serve with
uvicorn, reload the keys on SIGHUP (a file that fails its check leaves the old keys), and drain
on SIGTERM/SIGINT (stop accepting, finish what was accepted within the grace period, exit 0; a
second signal stops at once)."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from pathlib import Path

from ..errors import UdiffError
from . import keys as keyring
from . import runs as served
from .audit import AuditLog
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
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP; without
    # it Nagle holds each response body for the client's delayed ACK (+40 ms, measured).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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


def load_keys(keys_file: str | None, token: str | None,
              labels: dict[str, list[str]]) -> keyring.Keys | None:
    """The keys a server checks: the file's, and ``--token-file``'s as one key with every scope;
    None (no file, no token): an open server."""
    extra = [keyring.every_scope("token", token, labels)] if token else []
    if keys_file is None:
        return keyring.Keys(extra, "--token-file") if extra else None
    return keyring.load(keys_file, labels, extra)


def make_server(service: Service, log_level: str = "warning"):
    import uvicorn

    from .app import create_app

    config = uvicorn.Config(create_app(service), log_level=log_level,
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def on_reload(service: Service, keys_file: str, token: str | None) -> None:
    """SIGHUP: read the keys file again; from then on a removed key gets 401. Accepted work is
    not touched (jobs keep their owner's name)."""
    def handle(sig, frame):
        try:
            service.keys = load_keys(keys_file, token, service.labels())
        except UdiffError as e:
            print(f"udiff serve: SIGHUP: keys not reloaded, the old {len(service.keys)} stay: "
                  f"{e}", file=sys.stderr, flush=True)
            return
        print(f"udiff serve: SIGHUP: reloaded {keys_file} ({len(service.keys)} key(s))",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGHUP, handle)


def on_signals(service: Service, server, grace: float) -> None:
    """SIGTERM/SIGINT: drain (on a thread), then stop uvicorn; a second one: stop now."""
    def handle(sig, frame):
        if service.draining:
            print("udiff serve: second signal: stopping now", file=sys.stderr, flush=True)
            server.should_exit = server.force_exit = True
            service.worker.stop.set()
            return

        def drain():
            service.drain(grace)
            server.should_exit = True
        threading.Thread(target=drain, name="udiff-serve-drain", daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def serve(run_dirs: list[str], host: str, port: int, token_file: str | None, limits: Limits,
          device: str, grace: float, keys_file: str | None = None,
          audit_log: str | None = None, audit_max_bytes: int = 16 * 2**20) -> int:
    """Uvicorn answers HTTP on a thread; the worker runs on the main thread. On CPU that is not
    a detail: PyTorch's OpenMP pool runs a small model ~2.5x slower when its ops come from a
    thread other than the one that started it (measured: 180 vs 450 ms for the demo UNet)."""
    require()
    token = read_token(token_file)
    paths = served.check(run_dirs)
    keys = load_keys(keys_file, token, served.label_names(paths))
    device = served.device_of(device)
    sock = bind(host, port)  # before loading: an occupied port fails fast
    runs = served.load(paths, device, limits)
    if host in ("0.0.0.0", "::") and keys is None:
        print(f"udiff serve: warning: listening on {host} without --keys-file or --token-file: "
              "anyone who can reach this machine can use it", file=sys.stderr, flush=True)
    audit = AuditLog(audit_log, audit_max_bytes) if audit_log else None
    service = Service(runs, limits, keys, audit)
    server = make_server(service)
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="udiff-http",
                            daemon=True)
    on_signals(service, server, grace)
    if keys_file:
        on_reload(service, keys_file, token)
    http.start()
    port = sock.getsockname()[1]
    print(f"udiff serve: http://{host}:{port}/ ({len(runs)} run(s)"
          f"{f', {len(keys)} key(s)' if keys else ''}; the API at /docs)",
          file=sys.stderr, flush=True)
    service.run()  # warm up, say ready, work until drained
    server.should_exit = True
    http.join(30)
    if audit:
        audit.close()
    print("udiff serve: stopped", file=sys.stderr, flush=True)
    return 0
