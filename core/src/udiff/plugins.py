"""Plugin loading and the component registry.

Built-ins are ordinary plugins registered first with ``trylast`` hookimpls, so a third-party
component of the same name wins. Every entry point is loaded, validated and called inside its own
guard: one broken plugin is recorded with its error and never stops the host (simonw/llm#1280).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from . import hookspecs
from .errors import UdiffError, describe_validation

ROLES = ("autoencoder", "denoiser", "scheduler", "conditioner")
HOOKS = {role: f"register_{role}s" for role in ROLES}
BUILTINS = (
    "udiff.builtins.autoencoder_kl",
    "udiff.builtins.autoencoder_vq",
    "udiff.builtins.noise_schedulers",
    "udiff.builtins.flow_scheduler",
    "udiff.builtins.label_conditioner",
)
ENTRY_POINT_GROUP = "udiff"


@dataclass(frozen=True)
class Component:
    """One registered component: what a plugin handed to ``register``."""

    role: str
    name: str
    config_model: type[BaseModel]
    factory: Callable[..., Any]
    presets: dict[str, dict[str, Any]]
    plugin: str
    version: str
    meta: dict[str, Any] = field(default_factory=dict)

    def make_config(self, preset: str | None = None, options: dict | None = None) -> BaseModel:
        """Defaults < preset < options, validated; errors name the field."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in self.presets:
                known = ", ".join(self.presets) or "none"
                raise UdiffError(
                    f"unknown preset {preset!r} for {self.role} {self.name!r} (available: {known})"
                )
            values.update(self.presets[preset])
        values.update(options or {})
        try:
            return self.config_model(**values)
        except ValidationError as e:
            raise UdiffError(describe_validation(self.role, e)) from None

    def build(self, config: BaseModel, context: Any = None) -> Any:
        try:
            return self.factory(config, context)
        except UdiffError:
            raise
        except Exception as e:  # a plugin's bug must surface as one line, not a traceback
            raise UdiffError(
                f"{self.role} {self.name!r} from plugin {self.plugin} failed to build: "
                f"{type(e).__name__}: {e}"
            ) from e


@dataclass
class PluginRecord:
    name: str
    version: str | None
    builtin: bool
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "provides": self.provides,
                "error": self.error}


class Registry:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("udiff")
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.components: dict[str, dict[str, Component]] = {role: {} for role in ROLES}

    # -- loading ---------------------------------------------------------------------------
    def load(self, extra: list[tuple[str, Any]] = ()) -> Registry:
        import udiff

        blocked = {n.strip() for n in os.environ.get("UDIFF_DISABLE_PLUGINS", "").split(",")}
        for modname in BUILTINS:
            self._add(modname, udiff.__version__, True, lambda m=modname: importlib.import_module(m))
        for dist in metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP:
                    continue
                name = dist.metadata["Name"]
                if name in blocked or ep.name in blocked or name in self.records:
                    continue
                self._add(name, dist.version, False, ep.load)
        for name, obj in extra:
            self._add(name, None, False, lambda o=obj: o)
        self._collect()
        return self

    def _add(self, name: str, version: str | None, builtin: bool, loader: Callable) -> None:
        record = self.records[name] = PluginRecord(name, version, builtin)
        try:
            plugin = loader()
            unknown = [
                attr for attr in dir(plugin)
                if self.pm.parse_hookimpl_opts(plugin, attr) is not None
                and attr not in HOOKS.values()
            ]
            if unknown:
                raise pluggy.PluginValidationError(plugin, f"unknown hook(s) {', '.join(unknown)}")
            self.pm.register(plugin, name=name)
        except Exception as e:
            self._fail(record, e)

    def _fail(self, record: PluginRecord, e: BaseException) -> None:
        record.error = " ".join(f"{type(e).__name__}: {e}".split())  # one line
        record.provides = {}
        plugin = self.pm.get_plugin(record.name)
        if plugin is not None:
            self.pm.unregister(plugin)
        print(f"udiff: warning: plugin {record.name} disabled: {record.error}", file=sys.stderr)

    def _collect(self) -> None:
        for role, hook in HOOKS.items():
            # pluggy calls the last hookimpl first: walk in call order so non-trylast plugins win.
            for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
                record = self.records[impl.plugin_name]
                if record.error:
                    continue
                staged: list[Component] = []

                def register(name, config_model, factory, presets=None, *, _role=role,
                             _rec=record, _staged=staged, **meta):
                    _staged.append(self._validate(_role, name, config_model, factory, presets,
                                                  _rec, meta))

                try:
                    impl.function(register=register)
                    for comp in staged:
                        self._accept(comp, record)
                except Exception as e:
                    self._drop(record)
                    self._fail(record, e)

    def _validate(self, role, name, config_model, factory, presets, record, meta) -> Component:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{role} name must be a non-empty string, got {name!r}")
        if not (isinstance(config_model, type) and issubclass(config_model, BaseModel)):
            raise TypeError(f"{role} {name!r}: config model must be a pydantic BaseModel class")
        if not callable(factory):
            raise TypeError(f"{role} {name!r}: factory is not callable")
        presets = dict(presets or {})
        for pname, values in presets.items():
            try:
                config_model(**values)
            except ValidationError as e:
                raise ValueError(f"{role} {name!r} preset {pname!r}: "
                                 f"{describe_validation('', e)}") from None
        return Component(role, name, config_model, factory, presets, record.name,
                         record.version or "0", meta)

    def _accept(self, comp: Component, record: PluginRecord) -> None:
        existing = self.components[comp.role].get(comp.name)
        if existing is not None:
            if record.builtin:
                return  # shadowed by a third-party plugin: by design
            raise ValueError(f"duplicate {comp.role} name {comp.name!r}, already registered by "
                             f"plugin {existing.plugin}")
        self.components[comp.role][comp.name] = comp
        record.provides.setdefault(comp.role, []).append(comp.name)

    def _drop(self, record: PluginRecord) -> None:
        for role in ROLES:
            for name in record.provides.get(role, []):
                self.components[role].pop(name, None)

    # -- lookup ----------------------------------------------------------------------------
    def get(self, role: str, name: str) -> Component:
        comps = self.components[role]
        if name in comps:
            return comps[name]
        broken = [r for r in self.records.values() if r.error and name in r.name]
        hint = ""
        if broken:
            hint = f"; plugin {broken[0].name} is installed but failed to load: {broken[0].error}"
        elif role == "denoiser":
            hint = f"; to add it: pip install udiff-{name}"
        raise UdiffError(f"unknown {role} {name!r} (available: {', '.join(sorted(comps)) or 'none'})"
                         + hint)

    def plugins(self, include_builtins: bool = False) -> list[PluginRecord]:
        return [r for r in self.records.values() if include_builtins or not r.builtin]


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


def get(role: str, name: str) -> Component:
    return registry().get(role, name)


def build(role: str, choice, context: Any) -> tuple[Component, BaseModel, Any]:
    """Build a config choice (``name``, ``preset``, ``options``): (component, config, object)."""
    comp = get(role, choice.name)
    config = comp.make_config(choice.preset, choice.options)
    return comp, config, comp.build(config, context)
