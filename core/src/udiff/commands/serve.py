"""``udiff serve``: trained runs over HTTP (FastAPI + uvicorn, the ``serve`` extra)."""

from __future__ import annotations

NAME = "serve"
HELP = "serve trained runs over HTTP: a JSON API, jobs, request batching and a page"


def add_arguments(p) -> None:
    from ..serve.schema import Limits

    limits = Limits.model_fields
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="trained runs, each served under its folder name")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 needs --token-file)")
    p.add_argument("--port", type=int, default=8000, help="port; 0: any free one, printed (default: 8000)")
    p.add_argument("--token-file", metavar="PATH", help="file holding a bearer token every "
                   "route but /healthz then requires (one key with every scope)")
    p.add_argument("--keys-file", metavar="KEYS_TOML", help="API keys, each with its runs, "
                   "labels and quotas (udiff keys add); SIGHUP reloads it")
    p.add_argument("--audit-log", metavar="PATH", help="append one JSON line per request that "
                   "reached a run (fsynced; rotated by size)")
    p.add_argument("--audit-max-bytes", type=int, default=16 * 2**20, metavar="N",
                   help="rotate the audit log at N bytes, keeping 5 (default: 16 MiB)")
    for flag in ("max_batch_images", "max_queue", "max_steps", "max_images"):
        p.add_argument(f"--{flag.replace('_', '-')}", type=int, default=limits[flag].default,
                       metavar="N", help=f"{limits[flag].description.rstrip('.')} "
                       f"(default: {limits[flag].default})")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help="where the models run; one server process per GPU (default: auto)")
    p.add_argument("--grace-seconds", type=float, default=30.0, metavar="S",
                   help="on SIGTERM/Ctrl-C, time to finish accepted work (default: 30)")


def main(args) -> int:
    from pydantic import ValidationError

    from ..errors import UdiffError
    from ..serve.process import serve
    from ..serve.schema import Limits

    try:
        limits = Limits(max_batch_images=args.max_batch_images, max_queue=args.max_queue,
                        max_steps=args.max_steps, max_images=args.max_images)
    except ValidationError as e:
        first = e.errors()[0]
        raise UdiffError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") \
            from None
    if not 0 <= args.port < 65536:
        raise UdiffError(f"--port {args.port}: must be 0..65535 (0: any free port)")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise UdiffError(f"--device {args.device}: auto, cpu, cuda or cuda:N")
    if args.audit_max_bytes < 4096:
        raise UdiffError(f"--audit-max-bytes {args.audit_max_bytes}: must be >= 4096")
    return serve(args.run_dirs, args.host, args.port, args.token_file, limits, args.device,
                 args.grace_seconds, args.keys_file, args.audit_log, args.audit_max_bytes)
