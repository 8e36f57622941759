"""Plugin loading and the component registry.

Built-ins are ordinary plugins registered first with ``trylast`` hookimpls, so a third-party
component of the same name wins. Every entry point is loaded, validated and called inside its own
guard: one broken plugin is recorded with its error and never stops the host (simonw/llm#1280).
Registration is light: a factory (or reader) given as ``"module:attribute"`` is imported only when
a component is built, so listing plugins imports no model library.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from .. import hookspecs
from ..errors import UdiffError, describe_validation
from ..version import __version__
from .contract import Meta, is_reference, parse_meta, resolve

ROLES = ("autoencoder", "denoiser", "scheduler", "conditioner")
HOOKS = {role: f"register_{role}s" for role in ROLES}
COMMAND_HOOK = "register_commands"
COMMAND_ATTRS = ("NAME", "HELP", "add_arguments", "main")
BUILTINS = ("udiff.builtins.autoencoders", "udiff.builtins.schedulers",
            "udiff.builtins.conditioners")
ENTRY_POINT_GROUP = "udiff"


@dataclass(frozen=True)
class Component:
    """One registered component: what a plugin handed to ``register``."""

    role: str
    name: str
    config_model: type[BaseModel]
    factory: Callable[..., Any] | str
    presets: dict[str, dict[str, Any]]
    plugin: str
    version: str
    meta: Meta

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
            return resolve(self.factory)(config, context)
        except UdiffError:
            raise
        except Exception as e:  # a plugin's bug must surface as one line, not a traceback
            raise UdiffError(
                f"{self.role} {self.name!r} from plugin {self.plugin} failed to build: "
                f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            ) from e


@dataclass(frozen=True)
class Command:
    """A CLI command a plugin registered (``udiff NAME``)."""

    name: str
    help: str
    add_arguments: Callable[..., None]
    main: Callable[..., int]
    plugin: str


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
        self.commands: dict[str, Command] = {}

    # -- loading ---------------------------------------------------------------------------
    def load(self, extra: list[tuple[str, Any]] = ()) -> Registry:
        blocked = {n.strip() for n in os.environ.get("UDIFF_DISABLE_PLUGINS", "").split(",")}
        for modname in BUILTINS:
            self._add(modname, __version__, True, lambda m=modname: importlib.import_module(m))
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            name = dist.metadata["Name"] if dist else ep.name
            if name in blocked or ep.name in blocked or name in self.records:
                continue
            self._add(name, dist.version if dist else None, False, ep.load)
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
                and attr not in (*HOOKS.values(), COMMAND_HOOK)
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
        for role, hook in (*HOOKS.items(), ("command", COMMAND_HOOK)):
            # pluggy calls the last hookimpl first: walk in call order so non-trylast plugins win.
            for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
                record = self.records[impl.plugin_name]
                if record.error:
                    continue
                staged: list[Component | Command] = []

                def register(*args, _role=role, _rec=record, _staged=staged, **meta):
                    _staged.append(self._command(_rec, *args, **meta) if _role == "command"
                                   else self._validate(_role, *args, record=_rec, meta=meta))

                try:
                    impl.function(register=register)
                    for item in staged:
                        self._accept(item, record)
                except Exception as e:
                    self._drop(record)
                    self._fail(record, e)

    @staticmethod
    def _command(record: PluginRecord, command: Any) -> Command:
        missing = [a for a in COMMAND_ATTRS if not hasattr(command, a)]
        if missing:
            raise TypeError(f"command {command!r} lacks {', '.join(missing)}")
        name = command.NAME
        if not (isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9-]*", name)):
            raise TypeError(f"command name must be a lower-case word, got {name!r}")
        if not (callable(command.add_arguments) and callable(command.main)):
            raise TypeError(f"command {name!r}: add_arguments and main must be callable")
        return Command(name, str(command.HELP), command.add_arguments, command.main, record.name)

    def _validate(self, role, name, config_model, factory, presets=None, *, record,
                  meta) -> Component:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{role} name must be a non-empty string, got {name!r}")
        if not (isinstance(config_model, type) and issubclass(config_model, BaseModel)):
            raise TypeError(f"{role} {name!r}: config model must be a pydantic BaseModel class")
        if not is_reference(factory):
            raise TypeError(f"{role} {name!r}: factory must be callable or a 'module:attribute' "
                            "string")
        typed = parse_meta(role, name, meta)
        presets = dict(presets or {})
        for pname, values in presets.items():
            try:
                config_model(**values)
            except ValidationError as e:
                raise ValueError(f"{role} {name!r} preset {pname!r}: "
                                 f"{describe_validation('', e)}") from None
        return Component(role, name, config_model, factory, presets, record.name,
                         record.version or "0", typed)

    def _accept(self, item: Component | Command, record: PluginRecord) -> None:
        role = getattr(item, "role", "command")
        table = self.commands if role == "command" else self.components[role]
        existing = table.get(item.name)
        if existing is not None:
            if record.builtin:
                return  # shadowed by a third-party plugin: by design
            raise ValueError(f"duplicate {role} name {item.name!r}, already registered by "
                             f"plugin {existing.plugin}")
        table[item.name] = item
        record.provides.setdefault(role, []).append(item.name)

    def _drop(self, record: PluginRecord) -> None:
        for role in ROLES:
            for name in record.provides.get(role, []):
                self.components[role].pop(name, None)
        for name in record.provides.get("command", []):
            self.commands.pop(name, None)

    # -- lookup ----------------------------------------------------------------------------
    def broken(self, plugin: str | None = None, component: str | None = None) -> PluginRecord | None:
        """The failed plugin named ``plugin`` (or whose name contains ``component``), if any."""
        for r in self.records.values():
            if r.error and (r.name == plugin or (component and component in r.name)):
                return r
        return None

    def get(self, role: str, name: str, plugin: str | None = None) -> Component:
        """The component ``name``; ``plugin``: the distribution expected to provide it (a saved
        run records it), for the hint when it is missing."""
        comps = self.components[role]
        if name in comps:
            return comps[name]
        broken = self.broken(plugin, name)
        if broken:
            raise UdiffError(f"{role} {name!r} is unavailable: plugin {broken.name} is installed "
                             f"but failed to load: {broken.error}")
        hint = ""
        if plugin:
            hint = f"; it comes from plugin {plugin}, which is not installed: pip install {plugin}"
        elif role == "denoiser":
            hint = f"; to add it: pip install udiff-{name}"
        raise UdiffError(f"unknown {role} {name!r} (available: {', '.join(sorted(comps)) or 'none'})"
                         + hint)

    def plugins(self, include_builtins: bool = False) -> list[PluginRecord]:
        return [r for r in self.records.values() if include_builtins or not r.builtin]
