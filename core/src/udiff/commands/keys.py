"""``udiff keys add|remove|list``: the keys file of ``udiff serve --keys-file``. ``add`` prints
the new secret once and stores only its SHA-256; ``remove`` drops a key (send the server SIGHUP:
from then on it gets 401)."""

from __future__ import annotations

NAME = "keys"
HELP = "API keys for udiff serve --keys-file: add (prints the secret once), remove, list"


def add_arguments(p) -> None:
    from .flags import subcommands

    sub = subcommands(p, "keys", "add|remove|list", "what to do with the keys file")
    add = sub.add_parser("add", help="a new key: its secret is printed once, its hash appended")
    add.add_argument("name", metavar="NAME", help="the key's name (the audit log's 'key')")
    file(add)
    add.add_argument("--runs", required=True, metavar="LIST",
                     help="comma-separated run names or globs it may use ('*': every run)")
    add.add_argument("--labels", metavar="LIST", help="comma-separated label indices or names "
                     "it may use in each of those runs (default: every label)")
    add.add_argument("--requests-per-minute", type=int, metavar="N", help="at most N requests "
                     "a minute (then 429)")
    add.add_argument("--images-per-day", type=int, metavar="N",
                     help="at most N images a UTC day (then 429)")
    add.add_argument("--admin", action="store_true", help="may use udiff studio (train, "
                     "compare, export)")
    remove = sub.add_parser("remove", help="drop a key (the file is rewritten)")
    remove.add_argument("name", metavar="NAME", help="the key to drop")
    file(remove)
    file(sub.add_parser("list", help="the keys: name, scope, quotas (never a secret)"))


def file(p) -> None:
    p.add_argument("--file", required=True, metavar="KEYS_TOML", help="the keys file")


def main(args) -> int:
    return {"add": add, "remove": remove, "list": show}[args.keys](args)


def read(path) -> list[dict]:
    import tomllib
    from pathlib import Path

    from ..errors import UdiffError

    p = Path(path)
    if not p.exists():
        return []
    try:
        entries = tomllib.loads(p.read_text()).get("keys", [])
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UdiffError(f"--file {path} does not parse: {e}") from None
    if not isinstance(entries, list):
        raise UdiffError(f"--file {path}: 'keys' must be [[keys]] tables")
    return entries


def add(args) -> int:
    from pathlib import Path

    from ..errors import UdiffError
    from ..run.files import atomic_write
    from ..serve.keys import HEADER, KEY_NAME, digest, entry_toml, new_secret

    if not KEY_NAME.fullmatch(args.name):
        raise UdiffError(f"NAME {args.name!r}: 1-64 letters, digits, '.', '_' or '-'")
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs:
        raise UdiffError("--runs: name at least one run (or '*')")
    labels = None
    if args.labels is not None:
        labels = [int(x) if x.strip().isdigit() else x.strip()
                  for x in args.labels.split(",") if x.strip()]
        if not labels:
            raise UdiffError("--labels: name at least one label (or leave it out: every label)")
    for flag in ("requests_per_minute", "images_per_day"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UdiffError(f"--{flag.replace('_', '-')} must be >= 1")
    path = Path(args.file)
    if any(e.get("name") == args.name for e in read(path)):
        raise UdiffError(f"key {args.name!r} is already in {path} (udiff keys remove it first)")
    secret = new_secret()
    entry = entry_toml(args.name, digest(secret), {r: "*" if labels is None else labels
                                                   for r in runs},
                       args.requests_per_minute, args.images_per_day, args.admin)
    old = path.read_text() if path.exists() else HEADER
    atomic_write(path, lambda p: p.write_text(old.rstrip("\n") + "\n\n" + entry))
    print(secret)  # the only time it is shown
    import sys

    print(f"udiff keys: added {args.name!r} to {path}; the secret above is not stored: give it "
          "to the key's user now (a running server reads the file on SIGHUP)", file=sys.stderr)
    return 0


def remove(args) -> int:
    from pathlib import Path

    from ..errors import UdiffError
    from ..run.files import atomic_write
    from ..serve.keys import HEADER, entry_toml

    entries = read(args.file)
    if not any(e.get("name") == args.name for e in entries):
        raise UdiffError(f"no key {args.name!r} in {args.file}")
    kept = [entry_toml(e["name"], e["sha256"], e.get("runs", {}), e.get("requests_per_minute"),
                       e.get("images_per_day"), e.get("admin", False))
            for e in entries if e.get("name") != args.name]
    text = HEADER + "\n" + "\n".join(kept)
    atomic_write(Path(args.file), lambda p: p.write_text(text))
    print(f"udiff keys: removed {args.name!r} from {args.file} ({len(kept)} left); send the "
          "server SIGHUP to refuse it from now on")
    return 0


def show(args) -> int:
    for e in read(args.file):
        quotas = ", ".join(f"{q.replace('_', ' ')} {e[q]}" for q in
                           ("requests_per_minute", "images_per_day") if e.get(q))
        runs = "; ".join(f"{r}: {v if v == '*' else ', '.join(map(str, v))}"
                         for r, v in e.get("runs", {}).items())
        print(f"{e.get('name')}\t{runs}" + (f"\t{quotas}" if quotas else ""))
    return 0
