"""``udiff bench``: the suite under pytest-benchmark, then the report, from an installed package."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ..errors import UdiffError
from ..run.files import prepare_out
from . import report, suite
from .plugin import make_settings


def run(out: str | Path, backbones: str | None = None, preset: str | None = None,
        batches: str | None = None, quick: bool = False, device: str = "cpu",
        overwrite: bool = False) -> dict:
    import pytest

    settings = make_settings(backbones, preset, batches, device, quick)  # errors before writing
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UdiffError("--device cuda: no CUDA device is available here")
    out = Path(out)
    prepare_out(out, overwrite)
    args = [suite.__file__, "-p", "udiff.bench.plugin", "-p", "no:cacheprovider", "-q",
            "--benchmark-json", str(out / "bench.json"), "--udiff-device", device,
            "--benchmark-columns", "median,iqr,rounds"]
    for flag, value in (("--udiff-backbones", backbones), ("--udiff-preset", preset),
                        ("--udiff-batches", batches)):
        if value:
            args += [flag, value]
    if quick:
        args.append("--udiff-quick")
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "pytest.ini"  # ours, not whatever project the user stands in
        ini.write_text("[pytest]\nfilterwarnings =\n    ignore::FutureWarning\n"
                       "    ignore::DeprecationWarning\n    ignore::UserWarning\n")
        code = pytest.main(["-c", str(ini), "--rootdir", tmp, *args])
    if code != 0 or not (out / "bench.json").exists():
        raise UdiffError(f"benchmark suite failed (pytest exit {int(code)}); see the output above")
    rat = report.write(out / "bench.json", out)
    if settings.skipped:
        print(f"udiff: note: no preset {settings.preset!r} in {', '.join(settings.skipped)}; "
              "skipped", file=sys.stderr)
    return rat
