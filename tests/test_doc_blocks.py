"""Every command and snippet of the README and docs/ runs (issue 34): each fenced block is marked
(tests/docblocks.py says how), each page's runnable blocks run as one script in a workspace that
holds what the pages name (``SHARED``), and a page whose example stops
working fails here. ``python tests/docblocks.py`` is not needed: ``-rA`` prints the not-run list."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import docblocks
import pytest

from conftest import TINY, write_folder
from udiff import fontset
from udiff.cli import main


def pages(tier: str) -> list[str]:
    return sorted({b.page for b in docblocks.every_block() if b.tier == tier})


def test_every_block_is_marked_run_or_says_why_not():
    unmarked = [b.where for b in docblocks.every_block() if b.tier is None and not (b.by or b.why)]
    assert unmarked == [], "mark each block (tests/docblocks.py): " + ", ".join(unmarked)
    print("not run:", *docblocks.not_run(), sep="\n  ")


@pytest.mark.parametrize("block", [b for b in docblocks.every_block() if b.by],
                         ids=lambda b: b.where)
def test_a_block_run_elsewhere_is_held_by_that_file(block):
    """``run by .ci/run``: each ``&&`` part of the block is one of that file's lines; ``run by
    PAGE.md``: each command is one of that page's runnable commands; ``run by tests/x.py``: that
    test reads the block from its page."""
    if block.by.startswith("tests/"):
        held = (docblocks.ROOT / block.by).read_text()
        assert block.page in held, f"{block.by} does not read docs/{block.page}"
        return
    if block.by.endswith(".md"):
        held = {x for b in docblocks.blocks(block.by.removeprefix("docs/")) if b.tier
                for x in docblocks.commands(b.body)}
    else:
        held = {x.strip() for x in (docblocks.ROOT / block.by).read_text().splitlines()}
    for command in docblocks.commands(block.body):
        assert command in held, f"{block.where}: {command!r} is not in {block.by}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(text: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", text], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), timeout=1800)


def test_a_broken_example_fails_its_page(tmp_path):
    """The runner is not a formality: a documented command that fails fails the script, and so
    does a server that never answers."""
    bad = docblocks.Block("x.md", 1, "bash", "udiff train --data nope/ --out runs/x\n", "suite")
    proc = run_script(docblocks.script([bad], free_port()), tmp_path)
    assert proc.returncode != 0 and "nope" in proc.stderr
    dead = docblocks.Block("x.md", 1, "bash", "udiff serve runs/none --port 8000\n", "suite")
    proc = run_script(docblocks.script([dead], free_port()), tmp_path)
    assert proc.returncode != 0 and "server exited" in proc.stdout
    line = docblocks.rewrite("udiff train --data d --out r  # a comment", 9)
    assert line == "udiff train --data d --out r --max-steps 30 --autoencoder-steps 30"


# what the pages name without making it: the repository's folders (``pip install -e core``,
# ``mkdocs``), a font set, three users' folders, a short UNet run on the digits as the
# reader's ``runs/mine`` and, copied (a run is served under its folder's name), as the served
# ``runs/digits`` and ``runs/users/u07`` (a run whose label 7 exists)
SHARED = ("core", "plugins", "docs", "mkdocs.yml", "fonts", "users", "runs/mine", "runs/digits",
          "runs/users/u07")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("docs-shared")
    for name in ("core", "plugins", "docs", "mkdocs.yml"):
        (ws / name).symlink_to(docblocks.ROOT / name)
    mine = ws / "runs" / "mine"
    assert main(["train", "--data", "digits", "--backbone", "unet", *TINY, "--out", str(mine)]) == 0
    for copy in ("digits", "users/u07"):
        shutil.copytree(mine, ws / "runs" / copy)
    write_folder(ws / "users", names=["u07", "u12", "u31"], per_label=16)
    assert fontset.main([str(ws / "fonts"), "--labels", "6", "--per-label", "60"]) == 0  # SHORTER
    return ws


def run_page(page: str, tier: str, shared: Path, tmp_path: Path) -> None:
    """The page's ``tier`` blocks as one script, in a folder of its own that links every shared
    path the page does not make itself."""
    chosen = [b for b in docblocks.blocks(page) if b.tier == tier]
    made = docblocks.made(chosen)
    for path in SHARED:
        if path not in made:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).symlink_to(shared / path)
    proc = run_script(docblocks.script(chosen, free_port()), tmp_path)
    assert proc.returncode == 0, f"docs/{page}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    print(proc.stdout[-2000:])


@pytest.mark.parametrize("page", pages("suite"))
def test_the_page_runs(page, shared, tmp_path):
    run_page(page, "suite", shared, tmp_path)


@pytest.mark.acceptance
@pytest.mark.parametrize("page", pages("acceptance"))
def test_the_page_runs_in_full(page, shared, tmp_path):
    run_page(page, "acceptance", shared, tmp_path)
