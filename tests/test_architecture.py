"""The tree shows the architecture: no import cycle in ``udiff``, every import goes to the same
or a lower layer (docs/architecture.md), no module over 400 lines, and the CLI starts without
torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import udiff

ROOT = Path(udiff.__file__).parent
# Lowest first; a module may import its own layer and those below (docs/architecture.md).
LAYERS = [
    ("base", ["udiff.errors", "udiff.version", "udiff.hookspecs", "udiff.context", "udiff.config",
              "udiff.data", "udiff.data_report", "udiff.fontset", "udiff.images",
              "udiff.scheduler_base", "udiff.machine", "udiff.client"]),
    ("plugins", ["udiff.plugins", "udiff.builtins", "udiff.weights.pretrained"]),
    ("weights", ["udiff.weights"]),
    ("run", ["udiff.run"]),
    ("sampling", ["udiff.sampling"]),
    ("evaluation", ["udiff.evaluation"]),
    ("sweeps", ["udiff.sweeps"]),
    ("training", ["udiff.training", "udiff.testing"]),
    ("serve", ["udiff.serve"]),
    ("bench", ["udiff.bench"]),
    ("compare", ["udiff.compare"]),
    # the studio is a front end like the CLI: its form is the CLI's flags (commands/flags)
    ("commands", ["udiff.commands", "udiff.studio", "udiff.cli", "udiff.__main__", "udiff"]),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """Every udiff module ``name`` imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from X import Y`: the submodule X.Y if there is one, else X itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer(name: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if name == p or name.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    assert best is not None, f"{name} is in no layer of docs/architecture.md"
    return best[0]


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_go_down_the_layers():
    upward = [f"{a} ({LAYERS[layer(a)][0]}) -> {b} ({LAYERS[layer(b)][0]})"
              for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert upward == []


def test_no_module_over_400_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {n: k for n, k in long.items() if k > 400} == {}


def loaded_after(*argv: str) -> set[str]:
    code = (f"import sys, runpy; sys.argv = ['udiff', *{argv!r}]\n"
            "try:\n    runpy.run_module('udiff', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('\\nMODULES', sorted(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    return set(eval(out.rsplit("MODULES", 1)[1]))


def test_help_and_plugins_import_no_model_library():
    for argv in (["--help"], ["train", "--help"], ["sample", "--help"], ["bench", "--help"],
                 ["bench", "perf", "--help"], ["plugins"],
                 ["plugins", "--json"]):
        heavy = {m for m in loaded_after(*argv) if m.split(".")[0] in ("torch", "diffusers",
                                                                        "timm", "accelerate")}
        assert heavy == set(), (argv, sorted(heavy)[:5])


def test_plugins_json_still_lists_every_backbone_lazily():
    proc = subprocess.run([sys.executable, "-m", "udiff", "plugins", "--json"],
                          capture_output=True, text=True, timeout=120)
    listed = {p["name"]: p for p in json.loads(proc.stdout)}
    assert listed["udiff-unet"]["provides"] == {"denoiser": ["unet"]}
