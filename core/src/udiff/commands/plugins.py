"""``udiff plugins``: every installed plugin, its components and their presets (light: no model
library is imported)."""

from __future__ import annotations

import json

NAME = "plugins"
HELP = "list installed plugins, their components and presets"


def add_arguments(p) -> None:
    p.add_argument("--all", action="store_true", help="include udiff's built-in components")
    p.add_argument("--json", action="store_true", help="machine-readable: name, version, "
                   "provides, presets, init_formats and error per plugin")


def main(args) -> int:
    from ..plugins import registry

    reg = registry()
    records = reg.plugins(include_builtins=args.all)

    def mine(record):
        return [c for role in reg.components.values() for c in role.values()
                if c.plugin == record.name]

    if args.json:
        listing = [r.as_json() | {
            "presets": {c.name: list(c.presets) for c in mine(r)},
            "init_formats": {c.name: list(c.meta.init_formats) for c in mine(r)
                             if c.role == "denoiser" and c.meta.init_formats}}
            for r in records]
        print(json.dumps(listing, indent=2))
        return 0
    for r in records:
        if r.error:
            print(f"{r.name} {r.version or ''}  ERROR {r.error}")
            continue
        print(f"{r.name} {r.version or ''}  " + "; ".join(
            f"{role}: {', '.join(names)}" for role, names in r.provides.items()))
        for c in mine(r):
            if c.presets:
                print(f"    {c.role} {c.name} presets: {', '.join(c.presets)}")
    if not records:
        print("no plugins installed (udiff plugins --all shows the built-ins)")
    return 0
