"""The fenced blocks of docs/*.md (README.md is docs/index.md), each marked by the HTML comment on
the line above it (issue 34):

    <!-- run -->                    run in the suite (tests/test_doc_blocks.py: a folder per page)
    <!-- run: acceptance -->        the same, under ``pytest -m acceptance``
    <!-- run[: acceptance] as FILE --> a toml/json block written to FILE for the blocks after it
    <!-- run by PATH -->            another test (or .ci/run) runs it; PATH must name the page or
                                    hold the block's commands line by line
    <!-- not run: REASON -->        listed by ``not_run()`` (GPU, several machines, hub weights)

A page's blocks of one tier become one bash script (``script()``), so a server a block starts
serves the blocks after it and a variable a block exports stays set. What the script changes
is all here, in ``SHORTER`` and ``rewrite()``: a documented training length would take hours on
CI's two cores, so each `udiff` command gets flags that shorten it (argparse keeps a flag's last
value); a line that starts a server runs in the background until it answers, on a free port;
``<pid>`` is that server's pid. Nothing else is edited."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
MARK = re.compile(r"<!-- (?:run(?P<acc>: acceptance)?(?: as (?P<file>\S+))?(?: by (?P<by>\S+))?"
                  r"|not run: (?P<why>[^>]+?)) -->")

# (the command's first words, the flags appended, unless the command has this flag): the
# shortest runs that still do every stage
SHORTER = [
    ("python -m udiff.fontset", "--labels 6 --per-label 60", None),  # 6 fonts, not 20 x 120
    ("udiff train", "--max-steps 30 --autoencoder-steps 30", "--plan-only"),
    ("udiff distill", "--pairs 32 --max-steps 20", None),
    ("udiff eval", "--per-label 4 --steps 4", None),
    ("udiff bench distill", "--per-label 4", None),
    ("udiff compare", "--preset tiny --per-label 4", "--collect"),
]
BUDGET = "--budget-steps 60"  # a compare's budget (minutes or steps): 60 steps an arm
SERVERS = ("udiff serve", "udiff studio", "mkdocs serve")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    body: str
    tier: str | None  # "suite" | "acceptance" | None (not run here)
    file: str | None = None
    by: str | None = None
    why: str | None = None

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """Every fenced block of ``docs/PAGE`` with its marker (``tier=None, why=None``: unmarked)."""
    text = (DOCS / page).read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.fullmatch(before.strip())
        line = text.count("\n", 0, m.start()) + 1
        if mark is None:
            found.append(Block(page, line, m.group(1), m.group(2), None))
        elif mark["why"]:
            found.append(Block(page, line, m.group(1), m.group(2), None, why=mark["why"]))
        else:
            tier = None if mark["by"] else "acceptance" if mark["acc"] else "suite"
            found.append(Block(page, line, m.group(1), m.group(2), tier, mark["file"], mark["by"]))
    return found


def every_block() -> list[Block]:
    return [b for page in sorted(p.name for p in DOCS.glob("*.md")) for b in blocks(page)]


def logical_lines(body: str) -> list[str]:
    """Shell lines with their backslash continuations joined."""
    return body.replace("\\\n", " ").splitlines()


def commands(body: str) -> list[str]:
    """A shell block's commands: its logical lines without comments, split at ``&&``."""
    return [part.strip() for line in logical_lines(body)
            for part in re.split(r"(?:^|\s)#", line)[0].split("&&") if part.strip()]


def port_of(text: str, port: int) -> str:
    """The documented port 8000 (``--port 8000``, ``localhost:8000``) -> ``port``."""
    return re.sub(r"(?<=[:= ])8000\b", str(port), text)


def rewrite(line: str, port: int) -> str:
    """One shell line as the script runs it (see the module's docstring)."""
    line = port_of(line, port)
    line = line.replace("<server pid>", "$SERVER").replace("<pid>", "$SERVER")
    code = line.partition(" #")[0]
    parts = [p.strip() for p in re.split(r"(&&)", code)]
    out = []
    for part in parts:
        for head, extra, unless in SHORTER:
            if part.startswith(head + " ") and not (unless and unless in part):
                part = f"{part} {extra}"
        if part.startswith("udiff compare"):
            part = re.sub(r"--budget-(minutes|steps) \S+", BUDGET, part)
        if part.startswith(SERVERS):
            if "--port" not in part and part.startswith(("udiff serve", "udiff studio")):
                part += f" --port {port}"
            if part.startswith("mkdocs serve"):
                part += f" -a 127.0.0.1:{port}"
            part = f"background {port} {part}"
        out.append(part)
    return " ".join(out)


PRELUDE = r"""set -euo pipefail
SERVERS=()
stop() { for p in "${SERVERS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; }
trap stop EXIT
# background PORT CMD...: start CMD, wait until it answers on 127.0.0.1:PORT (or fail if it exits)
background() {
  local -; set +x  # (the polling is not traced)
  local port=$1; shift
  # a second server on the port: the docs restart it (stop the first, as a reader would)
  if [ -n "${SERVER:-}" ] && kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER"; wait "$SERVER" || true
  fi
  "$@" > "server-$port.log" 2>&1 &
  SERVER=$!; SERVERS+=("$SERVER")
  for _ in $(seq 600); do
    kill -0 "$SERVER" 2>/dev/null || { cat "server-$port.log"; echo "server exited"; return 1; }
    python - "$port" "server-$port.log" 2>/dev/null <<'READY' && return 0
import pathlib, sys, urllib.error, urllib.request
try:  # udiff serve/studio: 200 once every run is loaded; another server: any answer
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
except urllib.error.HTTPError as e:  # with keys on, /readyz needs one: the log says it instead
    sys.exit(e.code != 404 and "udiff serve: ready" not in pathlib.Path(sys.argv[2]).read_text())
READY
    sleep 0.5
  done
  echo "no answer on $port"; return 1
}
PS4='+ ${SECONDS}s '; set -x  # each command on stderr, with the seconds since the page began
"""


def script(page_blocks: list[Block], port: int) -> str:
    """The bash script that runs ``page_blocks`` in order."""
    lines = [PRELUDE]
    for b in page_blocks:
        lines.append(f"echo \">>> {b.where} at $SECONDS s\"")
        if b.file:
            lines.append(f"mkdir -p \"$(dirname {shlex.quote(b.file)})\"")
            lines.append(f"cat > {shlex.quote(b.file)} <<'UDIFF_BLOCK'\n{b.body}UDIFF_BLOCK")
        elif b.lang == "python":
            lines.append(f"python - <<'UDIFF_BLOCK'\n{port_of(b.body, port)}UDIFF_BLOCK")
        elif b.lang in ("bash", "sh"):
            lines += [rewrite(x, port) for x in logical_lines(b.body)]
        else:
            raise ValueError(f"{b.where}: a {b.lang} block runs only 'as FILE'")
    return "\n".join(lines) + "\n"


def made(page_blocks: list[Block]) -> set[str]:
    """The paths a page's commands write (``--out P``, ``fontset P``, ``as P``), no slash at
    the end: the page makes them itself, so its workspace must not hold them yet."""
    text = "\n".join(b.body for b in page_blocks)
    paths = re.findall(r"(?:--out|udiff\.fontset) (\S+)", text)
    return {p.rstrip("/") for p in paths} | {b.file for b in page_blocks if b.file}


def not_run() -> list[str]:
    return [f"{b.where}: {b.why}" for b in every_block() if b.why]
