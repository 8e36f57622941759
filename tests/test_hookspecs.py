"""Every hook spec is typed, documented in docs/ and exercised by a test (as datasette does)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from udiff import hookspecs
from udiff.plugins import HOOKS
from udiff.plugins.registry import COMMAND_HOOK

ROOT = Path(__file__).resolve().parents[1]
SPECS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if name.startswith("register_")]


def test_one_spec_per_role_and_one_for_commands():
    assert sorted(SPECS) == sorted([*HOOKS.values(), COMMAND_HOOK])


@pytest.mark.parametrize("name", SPECS)
def test_spec_is_documented(name):
    fn = getattr(hookspecs, name)
    assert fn.__doc__ and len(fn.__doc__) > 40
    assert inspect.signature(fn).parameters["register"].annotation is not inspect.Parameter.empty
    docs = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    assert f"`{name}" in docs, f"{name} is not described in docs/"


@pytest.mark.parametrize("name", SPECS)
def test_spec_is_tested(name):
    tests = "".join(p.read_text() for p in ROOT.glob("**/tests/test_*.py")
                    if p.name != "test_hookspecs.py")
    assert f"def {name}(" in tests, f"no test implements {name}"
