"""The documented third-party backbone (docs/writing-a-backbone.md), as the page has it: its
module installed under the pyproject's name, version and entry point, the page's commands run
one by one, its conformance test run."""

from __future__ import annotations

import shlex
import tomllib

import docblocks

from udiff import plugins

PAGE = "writing-a-backbone.md"
BLOCKS = [b for b in docblocks.blocks(PAGE) if b.by == "tests/test_backbone_doc.py"]


def block(lang: str, index: int = 0) -> str:
    return [b.body for b in BLOCKS if b.lang == lang][index]


def documented_source() -> str:
    return block("python", 0)


def test_documented_backbone_is_at_most_60_lines():
    assert len(documented_source().strip().splitlines()) <= 60


def test_documented_backbone_end_to_end(cli, install_plugin, tmp_path, monkeypatch):
    project = tomllib.loads(block("toml"))["project"]
    (entry, module), = project["entry-points"]["udiff"].items()
    install_plugin(project["name"], module, documented_source(), project["version"], entry)
    monkeypatch.chdir(tmp_path)
    for line in docblocks.logical_lines(block("bash")):  # as the page's runner shortens them
        argv = shlex.split(docblocks.rewrite(line, 0))
        assert argv[0] == "udiff", line
        code, out, err = cli(*argv[1:])
        assert code == 0, (line, err)
        if argv[1] == "plugins":
            assert "udiff-convnet" in out and "convnet" in out and project["version"] in out
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert plugins.registry().records["udiff-convnet"].error is None
    namespace: dict = {}
    exec(block("python", 1), namespace)  # the page's conformance test, as its own test file
    namespace["test_conformance"]()
    cli.fails("export", "runs/convnet", "--format", "diffusers", "--out", "exported",
              match="has no diffusers counterpart")
    assert not (tmp_path / "exported").exists()
