"""The markdown report of a benchmark that scores sample sets (``udiff bench guidance``,
``udiff bench distill``): a title, what was scored, and a row per setting."""

from __future__ import annotations

from collections.abc import Callable


def report(name: str, result: dict, note: str,
           columns: list[tuple[str, Callable[[dict], str]]]) -> str:
    """``columns``: (header, cell of a row) in order; ``result``: machine, per_label, seed,
    fid_features and rows."""
    lines = [f"# udiff bench {name} — {result['machine']}", "",
             f"{result['per_label']} samples per label, seed {result['seed']}, FID/KID in "
             f"`{result['fid_features']}` features; {note}", "",
             "| " + " | ".join(h for h, _ in columns) + " |",
             "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


# The judge's columns, in every scored-set report.
SCORES: list[tuple[str, Callable[[dict], str]]] = [
    ("label_accuracy", lambda r: f"{r['label_accuracy']:.3f}"),
    ("FID", lambda r: f"{r['fid']:.1f}"), ("KID x1e3", lambda r: f"{r['kid']:.1f}"),
    ("diversity", lambda r: f"{r['diversity']:.2f}")]
