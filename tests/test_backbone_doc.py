"""The documented third-party backbone, installed through a real entry point, trains and samples."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import TINY
from udiff import plugins
from udiff.testing import check_denoiser

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-a-backbone.md"


def documented_source() -> str:
    block = re.search(r"<!-- backbone:start -->\n```python\n(.*?)```\n<!-- backbone:end -->",
                      DOC.read_text(), re.S)
    assert block, "the backbone code block is missing from docs/writing-a-backbone.md"
    return block.group(1)


def test_documented_backbone_is_at_most_60_lines():
    assert len(documented_source().strip().splitlines()) <= 60


def test_documented_backbone_end_to_end(cli, install_plugin, tmp_path):
    install_plugin("udiff-convnet", "udiff_convnet", documented_source())
    code, out, _ = cli("plugins")
    assert code == 0 and "udiff-convnet" in out and "convnet" in out
    assert check_denoiser("convnet")["plugin"] == "udiff-convnet"
    run = tmp_path / "run"
    code, _, err = cli("train", "--data", "digits", "--backbone", "convnet", *TINY, "--out", run)
    assert code == 0, err
    code, _, err = cli("sample", run, "--labels", "0,3", "--per-label", "2", "--steps", "4",
                       "--out", tmp_path / "grid.png")
    assert code == 0, err
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert plugins.registry().records["udiff-convnet"].error is None
    cli.fails("export", run, "--format", "diffusers", "--out", tmp_path / "exported",
              match="has no diffusers counterpart")
    assert not (tmp_path / "exported").exists()
