"""pytest options of the benchmark suite (``-p udiff.bench.plugin``); ``udiff bench`` sets them."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from .. import plugins
from ..errors import UdiffError
from ..plugins import assembly
from .cases import Case

UPGRADE_PATH = ("unet", "dit", "flux")  # the report's column order; the first is the baseline
CHECKPOINTING_CASES = [("flux", "small", 128), ("dit", "small", 64), ("unet", "tiny", 128)]


@dataclass
class Settings:
    """``backbones`` are compared case by case; the ratios (host overheads, memory savings, the
    solver gap) are properties of udiff, measured on ``reference`` -- the installed built-in
    backbones -- whatever ``--backbones`` names, so a slow third-party backbone never blows the
    budget of ``--quick``."""

    backbones: list[str]
    preset: str
    batches: list[int]
    device: str
    quick: bool
    latent_size: int = 8
    rounds: int = 5
    pairs: int = 5
    steps: int = 10
    skipped: list[str] = field(default_factory=list)
    reference: list[str] = field(default_factory=list)

    def cases(self) -> list[Case]:
        return [Case(b, self.preset, n, self.device, self.latent_size, steps=self.steps,
                     scheduler=assembly.training_scheduler(b))
                for b in self.backbones for n in self.batches]

    def checkpointing_case(self) -> Case:
        """A case where activations dominate (measured: flux small b128 0.54, dit small b64
        0.56, unet tiny b128 0.65 on 16x16 latents): the first of these installed."""
        for backbone, preset, batch in CHECKPOINTING_CASES:
            if backbone in self.reference:
                return Case(backbone, preset, batch, self.device, latent_size=16)
        return self.ratio_case(batch=64, latent_size=16)

    def gap_backbone(self) -> str:
        """The backbone whose tiny preset trains fastest on the digits (measured: flux, then
        dit), for the sampler-accuracy ratio."""
        return next((b for b in ("flux", "dit") if b in self.reference), self.reference[0])

    def ratio_case(self, batch: int | None = None, **over) -> Case:
        """The first reference backbone's case: what the overhead ratios are measured on."""
        backbone = self.reference[0]
        preset = self.preset if self.preset in plugins.get("denoiser", backbone).presets else (
            "tiny" if self.quick else "bench")
        return Case(**{"backbone": backbone, "preset": preset,
                       "batch": batch or self.batches[0], "device": self.device,
                       "latent_size": self.latent_size, "steps": self.steps, **over})


def make_settings(backbones: str | None = None, preset: str | None = None,
                  batches: str | None = None, device: str = "cpu", quick: bool = False) -> Settings:
    """Validated settings; a backbone without the preset is skipped (``Settings.skipped``)."""
    installed = sorted(plugins.registry().components["denoiser"],
                       key=lambda n: (UPGRADE_PATH.index(n) if n in UPGRADE_PATH else 99, n))
    wanted = [b.strip() for b in (backbones or "").split(",") if b.strip()] or installed
    preset = preset or ("tiny" if quick else "bench")
    missing = [b for b in wanted if b not in installed]
    if missing:
        raise UdiffError(f"--backbones: not installed: {', '.join(missing)} (installed: "
                         f"{', '.join(installed) or 'none'})")
    no_preset = [b for b in wanted if preset not in plugins.get("denoiser", b).presets]
    chosen = [b for b in wanted if b not in no_preset]
    if not chosen:
        raise UdiffError(f"--preset: no chosen backbone has preset {preset!r}")
    try:
        sizes = [int(b) for b in (batches or ("8" if quick else "16,64")).split(",")]
    except ValueError:
        raise UdiffError(f"--batches: {batches!r} is not a comma-separated list of integers") from None
    if any(n < 1 for n in sizes):
        raise UdiffError(f"--batches: batch sizes must be positive, got {batches!r}")
    reference = [b for b in installed if b in UPGRADE_PATH] or chosen
    return Settings(chosen, preset, sizes, device, quick, latent_size=8 if quick else 16,
                    rounds=5 if quick else 10, pairs=5 if quick else 9,
                    steps=10 if quick else 50, skipped=no_preset, reference=reference)


def settings_from(config) -> Settings:
    opt = config.getoption
    try:
        return make_settings(opt("udiff_backbones"), opt("udiff_preset"), opt("udiff_batches"),
                             opt("udiff_device"), opt("udiff_quick"))
    except UdiffError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_addoption(parser):
    g = parser.getgroup("udiff-bench")
    g.addoption("--udiff-backbones", help="comma-separated backbones (default: all installed)")
    g.addoption("--udiff-preset", help="preset of every backbone (default: bench, quick: tiny)")
    g.addoption("--udiff-batches", help="comma-separated batch sizes")
    g.addoption("--udiff-device", default="cpu", choices=["cpu", "cuda"])
    g.addoption("--udiff-quick", action="store_true", help="tiny presets, few rounds")


def pytest_configure(config):
    config.udiff_bench = settings_from(config)
    _progress.update(config=config, total=0, done=0)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = metafunc.config.udiff_bench.cases()
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture
def settings(request) -> Settings:
    s = request.config.udiff_bench
    if s.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device here")
    return s



_progress: dict = {}  # the session's config and how many cases ran (a line per case)


def _say(line: str) -> None:
    reporter = _progress["config"].pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"udiff bench: {line}")


def pytest_collection_finish(session):
    s, n = session.config.udiff_bench, len(session.items)  # after -k deselection
    _progress["total"] = n
    _say(f"{n} cases; backbones {', '.join(s.backbones)}; ratios on {s.reference[0]}")


def pytest_runtest_logreport(report):
    """A line per case as it ends: which, how it went, how long it took."""
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _progress["done"] += 1
        _say(f"[{_progress['done']}/{_progress['total']}] {report.nodeid.split('::')[-1]} "
             f"{report.outcome} in {report.duration:.1f} s")
