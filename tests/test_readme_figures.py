"""Every figure the README and the docs' pages state comes from a result file (issues 27, 34).

Each section (of README.md and of every page under docs/) that states measured figures names its
sources in an HTML comment, ``<!-- figures: benchmarks/results/DIR ... -->`` (invisible on the
rendered page). A *figure* is a number with a decimal point, or any number with a unit of time or
memory (``174 s``, ``12 ms``, ``840 MB``), outside code, links and dates; a bound (after ``≤``,
``≥``, ``<``, ``>``, "at most", "at least", "within") is a target or a limit, not a measurement,
and is left out. A figure is held by a source when some number in those files, in the same unit
or a plain conversion of it (×1000, ÷1000, ÷60, ÷10⁶, ÷2²⁰, ×100, ...), rounds to it at the
page's precision. Every results folder is named with its date and records the machine it ran
on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SOURCES = re.compile(r"<!--\s*figures:\s*(.*?)-->", re.S)
UNIT = r"(?:\s?(?:ms|s|min|minutes|MB|MiB|GB|GiB|KB)\b)"
FIGURE = re.compile(r"(?<![\w.\-/])(\d+\.\d+(?:e-?\d+)?|\d+(?=" + UNIT + r"))(?![\w.]*\.\d)"
                    r"(?:\s?(ms|s|min|minutes|MB|MiB|GB|GiB|KB|%)(?![\w]))?")
BOUND = re.compile(r"(?:≤|≥|<|>|at most|at least|within)\s*$")
# The conversions a figure may be of a held number, by the figure's unit: a time (held in s or
# ms), a size (held in bytes or MB), a share (held as a fraction), else a plain number (the same,
# ×1e3 as KID is shown, or millions/billions as parameters and MACs are).
TIME = (1, 1e3, 1e-3, 1 / 60, 1e-3 / 60)
SCALES = {"ms": TIME, "s": TIME, "min": TIME, "minutes": TIME, "%": (100,),
          "MB": (1, 1e-6, 2**-20), "MiB": (1, 1e-6, 2**-20), "GB": (1, 1e-9, 2**-30),
          "GiB": (1, 1e-9, 2**-30), "KB": (1, 1e-3, 2**-10), "": (1, 1e3, 1e-3, 1e-6, 1e-9)}


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for each heading of the README, fenced code blocks left out."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    parts = re.split(r"^(#{1,4} .*)$", text, flags=re.M)
    return [(parts[0 if i == 0 else i - 1].strip() if i else "(top)", parts[i])
            for i in range(0, len(parts), 2)]


def figures(body: str) -> list[str]:
    prose = SOURCES.sub("", body)
    prose = re.sub(r"`[^`]*`", " ", prose)  # code: commands, flags, settings
    prose = re.sub(r"\]\([^)]*\)", "]", prose)  # link and image targets
    prose = re.sub(r"\d{4}-\d{2}-\d{2}", " ", prose)  # dates
    prose = re.sub(r"\d+\.\d+\.\d+", " ", prose)  # versions
    found = []
    for m in FIGURE.finditer(prose):
        if not BOUND.search(prose[max(0, m.start() - 12):m.start()]):
            found.append(m.group(1) + (f" {m.group(2)}" if m.group(2) else ""))
    return found


def numbers_in(path: Path) -> set[float]:
    """Every number a result file holds (JSON values and numbers inside its strings)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    held: set[float] = set()
    for f in files:
        if f.suffix not in (".json", ".md", ".xml", ".txt"):
            continue
        for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", f.read_text()):
            held.add(abs(float(n)))
    return held


def tolerance(number: str) -> float:
    mantissa, _, exponent = number.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10 ** (int(exponent or 0) - decimals) * (1 + 1e-9)


def held(figure: str, numbers: set[float]) -> bool:
    """``figure``: a number with its unit (``"174 s"``, ``"0.94 %"``, ``"6.3"``)."""
    number, _, unit = figure.partition(" ")
    value, tol = float(number), tolerance(number)
    return any(abs(h * s - value) <= tol for h in numbers for s in SCALES[unit])


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_figure_is_held_by_a_result_file_of_its_section(page):
    unsourced = []
    for heading, body in sections(page.read_text()):
        found = figures(body)
        declared = [p for m in SOURCES.finditer(body) for p in m.group(1).split()]
        for p in declared:
            assert (ROOT / p).exists() and (ROOT / p).is_relative_to(RESULTS), (heading, p)
        numbers = set().union(*(numbers_in(ROOT / p) for p in declared)) if declared else set()
        missing = [f for f in found if not held(f, numbers)]
        if missing:
            unsourced.append(f"{heading}: {', '.join(missing)}"
                             + ("" if declared else " (the section names no source)"))
    assert not unsourced, "figures no result file holds:\n" + "\n".join(unsourced)


def test_every_results_folder_has_its_date_and_machine():
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        assert re.search(r"\d{4}-\d{2}-\d{2}$", folder.name), folder.name
        text = " ".join(f.read_text() for f in folder.rglob("*")
                        if f.is_file() and f.suffix in (".json", ".md"))
        assert re.search(r'"machine"|machine:|lscpu', text), f"{folder.name}: no machine recorded"


@pytest.mark.parametrize("body, want", [
    ("accuracy 0.993, FID 6.3 in 174 s (batch 48, ≤ 300 s, at most 0.02)",
     ["0.993", "6.3", "174 s"]),
    ("trains 0.94% of it in 2.5 min, 840 MB", ["0.94 %", "2.5 min", "840 MB"]),
    ("`--lr 2e-3` on 2026-11-30, torch 2.14.1, ![x](docs/a-1.5.png) 2.0e-6", ["2.0e-6"]),
])
def test_what_counts_as_a_figure(body, want):
    assert figures(body) == want


def test_a_figure_is_held_at_its_precision_and_in_plain_units():
    numbers = {6.334, 752.6, 0.0011, 1856032.0, 0.0094}
    assert held("6.3", numbers) and held("12.5 min", numbers) and held("1.1", numbers)  # ×1e3
    assert held("1.86", numbers) and not held("6.4", numbers) and not held("13.80", numbers)
    assert held("753 s", numbers) and not held("750 s", numbers) and held("0.94 %", numbers)
    assert not held("12.5", numbers) and not held("94 s", numbers)  # ÷60 is for times only


def test_results_json_files_parse():
    for f in RESULTS.rglob("*.json"):
        json.loads(f.read_text())
