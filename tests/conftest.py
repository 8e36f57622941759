"""Shared fixtures: run the CLI in-process, and install throwaway plugins through real entry points.
Under CI (``CI=true``) every skip but "no CUDA device" fails the run (issue 27)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import docblocks
import numpy as np
import pytest
from PIL import Image

from udiff import plugins
from udiff.cli import main

# The one skip CI accepts: the CUDA tests on a machine without a GPU (CI never has one).
ALLOWED_SKIP = "no CUDA device"

TINY = ["--preset", "tiny", "--autoencoder-steps", "20", "--max-steps", "10", "--batch-size", "16"]


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test sees the plugins installed at that moment."""
    plugins.reset()
    yield
    plugins.reset()


class CLI:
    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def fails(self, *argv: str, match: str) -> str:
        """The command must exit 2 with exactly one line on stderr containing ``match``."""
        code, _, err = self(*argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (code, err)
        assert len(lines) == 1 and "Traceback" not in err, err
        assert match in lines[0], lines[0]
        return lines[0]


@pytest.fixture
def cli(capsys):
    return CLI(capsys)


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install ``source`` as module ``module`` of distribution ``dist`` with an entry point in
    group ``udiff``: a real ``*.dist-info`` on ``sys.path`` that importlib.metadata finds."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(dist: str, module: str, source: str, version: str = "0.1.0",
                entry: str | None = None) -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[udiff]\n{entry or module} = {module}\n")
        sys.modules.pop(module, None)
        plugins.reset()
        return site

    return install


def run_udiff(*argv: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh process."""
    return subprocess.run([sys.executable, "-m", "udiff", *map(str, argv)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def readme_demo() -> list[str]:
    """The README's demo command after its install (docs/index.md's first block):
    ``udiff demo --out demo-run``, as argv without ``udiff``."""
    first = docblocks.blocks("index.md")[0].body
    command = shlex.split(docblocks.commands(first)[-1])
    assert command[:2] == ["udiff", "demo"], first
    return command[1:]


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """``demo(backbone)``: the README's demo command (``--backbone B`` added for dit and flux)
    run once per session, in a fresh process and a folder of its own -> (its CompletedProcess,
    its --out folder). The demo test and the distillation test share the UNet's (a demo is ~3
    minutes of .ci/run)."""
    done: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}

    def get(backbone: str):
        if backbone not in done:
            argv = readme_demo()
            if backbone != "unet":  # the demo's default
                argv[1:1] = ["--backbone", backbone]
            cwd = tmp_path_factory.mktemp(f"demo-{backbone}")
            out = cwd / argv[argv.index("--out") + 1]
            done[backbone] = run_udiff(*argv, cwd=cwd), out
        return done[backbone]
    return get


def write_folder(root, labels=3, per_label=12, size=16, names=None):
    """A small RGB folder dataset whose labels differ in colour (folders ``user0``... or
    ``names``)."""
    rng = np.random.default_rng(0)
    names = names or [f"user{k}" for k in range(labels)]
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_label):
            arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            arr[..., k % 3] += 180
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny trained run on the digits, shared by the sampling tests: noise prediction (ddpm;
    the backbones' default is rectified flow since issue 29), so every noise sampler applies."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--data", "digits", "--backbone", "unet", *TINY, "--scheduler", "ddpm",
                 "--out", str(out)]) == 0
    return out


def pytest_sessionfinish(session, exitstatus):
    """CI fails on a skip it did not expect: a missing extra, chromium or a plugin that failed to
    load (a broken plugin is, by design, just not registered) must not turn a target into a skip.
    Session-wide: this conftest sees the reports of the plugins' tests too."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    unexpected = []
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if ALLOWED_SKIP not in reason:
            unexpected.append(f"{report.nodeid}: {reason}")
    if unexpected:
        print(f"\nCI: {len(unexpected)} skip(s) not allowed under CI=true (only "
              f"{ALLOWED_SKIP!r} is):", *unexpected, sep="\n  ")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
