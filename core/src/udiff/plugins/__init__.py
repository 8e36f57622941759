"""The plugin layer: the registry (guarded loading), the typed contract, the one assembly of a
stack, and the defaults per objective family.

``udiff.plugins.get(role, name)`` is the lookup everything above this layer uses.
"""

from __future__ import annotations

from typing import Any

from .registry import BUILTINS, ENTRY_POINT_GROUP, HOOKS, ROLES, Component, PluginRecord, Registry

__all__ = ["BUILTINS", "ENTRY_POINT_GROUP", "HOOKS", "ROLES", "Component", "PluginRecord",
           "Registry", "get", "register_plugin", "registry", "reset"]

_registry: Registry | None = None
_extra: list[tuple[str, Any]] = []


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = Registry().load(_extra)
    return _registry


def register_plugin(plugin: Any, name: str) -> None:
    """Register a plugin object at run time (tests, notebooks) as if it came from an entry point."""
    global _registry
    _extra.append((name, plugin))
    _registry = None


def reset() -> None:
    global _registry
    _extra.clear()
    _registry = None


def get(role: str, name: str, plugin: str | None = None) -> Component:
    return registry().get(role, name, plugin)

