"""``udiff studio``: train, watch, compare and serve from one page (the ``serve`` extra)."""

from __future__ import annotations

NAME = "studio"
HELP = "a page to inspect data, train, watch, compare and serve: one process, runs under --root"


def add_arguments(p) -> None:
    p.add_argument("--root", required=True, metavar="DIR", help="the studio's folder: label "
                   "folders under DIR/data; runs, comparisons and exports are written under it "
                   "(created if missing)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 needs --keys-file)")
    p.add_argument("--port", type=int, default=8000, help="port; 0: any free one, printed "
                   "(default: 8000)")
    p.add_argument("--keys-file", metavar="KEYS_TOML", help="udiff serve's keys; the studio "
                   "needs a key with admin = true, generating is scoped as on udiff serve")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help="where runs train and are served; one run trains at a time per device "
                   "(default: auto)")


def main(args) -> int:
    from ..errors import UdiffError
    from ..studio.process import studio

    if not 0 <= args.port < 65536:
        raise UdiffError(f"--port {args.port}: must be 0..65535 (0: any free port)")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise UdiffError(f"--device {args.device}: auto, cpu, cuda or cuda:N")
    return studio(args.root, args.host, args.port, args.keys_file, args.device)
