"""README.md is docs/index.md with its relative links made relative to the repository root (as
simonw/llm's README is generated from its docs): edit docs/index.md, then run

    python docs/readme.py

``tests/test_docs.py`` fails when README.md and docs/index.md disagree."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent
HEADER = ("<!-- Generated from docs/index.md by `python docs/readme.py`: edit that page, "
          "not this file. -->\n")


def render(index: str) -> str:
    """``](page.md)`` -> ``](docs/page.md)``; absolute URLs and in-page anchors stay."""
    def move(m: re.Match) -> str:
        target = m.group(1)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return m.group(0)
        return f"](docs/{target})"
    return HEADER + re.sub(r"\]\(([^)\s]+)\)", move, index)


if __name__ == "__main__":
    (DOCS.parent / "README.md").write_text(render((DOCS / "index.md").read_text()))
    print(f"README.md written from docs/index.md ({(DOCS.parent / 'README.md').stat().st_size} "
          "bytes)")
