"""A typed facade over pluggy: core code never calls ``pm.hook`` untyped.

Built-ins register through the same hooks as third parties. A third-party
plugin that fails to import, or whose hook raises, is recorded as a
:class:`PluginFailure` and listed; the rest of the tool keeps working.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from converter import hookspecs
from converter.command_api import CommandRegistry
from converter.errors import ConverterError
from converter.flags import OptionRegistry
from converter.registry import BackendRegistry, PassRegistry

BUILTIN_PLUGINS = (
    "converter.commands",
    "converter.torch_export",
    "converter.debug",
    "converter.view",
    "converter.benchmark",
    "converter.zoo",
    "converter.passes",
    "converter.plugins",
)
"""Folders that register their own contents (subcommands, passes, backends, flags); nothing finer."""


@dataclass(frozen=True)
class PluginFailure:
    name: str
    error: str


@dataclass
class Plugins:
    """The loaded plugin set: registries plus what failed to load."""

    passes: PassRegistry
    backends: BackendRegistry
    commands: CommandRegistry = field(default_factory=CommandRegistry)
    options: OptionRegistry = field(default_factory=OptionRegistry)
    loaded: list[str] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class PluginManager:
    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._sources: list[tuple[str, Any]] = []
        self.failures: list[PluginFailure] = []

    def add(self, name: str, plugin: Any) -> None:
        self._pm.register(plugin, name=name)
        self._sources.append((name, plugin))

    def add_builtins(self) -> None:
        for modname in BUILTIN_PLUGINS:
            self.add(f"builtin:{modname}", importlib.import_module(modname))

    def add_entry_points(self, group: str = hookspecs.ENTRY_POINT_GROUP) -> None:
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            self._add_entry_point(ep)

    def _add_entry_point(self, ep: EntryPoint) -> None:
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the tool down
            self.failures.append(PluginFailure(ep.name, f"cannot import {ep.value}: {_describe(exc)}"))
            return
        try:
            self.add(ep.name, plugin)
            self._pm.check_pending()
        except Exception as exc:  # e.g. a hookimpl whose name matches no hookspec
            self.failures.append(PluginFailure(ep.name, _describe(exc)))
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            self._sources = [(n, p) for n, p in self._sources if p is not plugin]

    def collect(self) -> Plugins:
        """Call the registration hooks plugin by plugin, so a failure is pinned on its plugin."""
        passes, backends, commands, options = PassRegistry(), BackendRegistry(), CommandRegistry(), OptionRegistry()
        hooks: tuple[tuple[str, Any], ...] = (
            ("converter_register_passes", passes),
            ("converter_register_backends", backends),
            ("converter_register_commands", commands),
            ("converter_add_options", options),
        )
        loaded = []
        for name, plugin in self._sources:
            source = name.split(":", 1)[0] if name.startswith("builtin:") else name
            saved = []
            for _, registry in hooks:
                registry.current_source = source
                saved.append(registry.snapshot())
            try:
                for hook_name, registry in hooks:
                    hook = getattr(self._pm.hook, hook_name)
                    for impl in [i for i in hook.get_hookimpls() if i.plugin is plugin]:
                        impl.function(registry=registry)
                loaded.append(name)
            except Exception as exc:
                if name.startswith("builtin:"):
                    raise  # a broken built-in is our bug, not the user's
                for (_, registry), snap in zip(hooks, saved):
                    registry.restore(snap)
                self.failures.append(PluginFailure(name, _describe(exc) if not isinstance(exc, ConverterError) else str(exc)))
        return Plugins(passes=passes, backends=backends, commands=commands, options=options, loaded=loaded, failures=list(self.failures))


def load_plugins(*, entry_points_enabled: bool = True, extra: dict[str, Any] | None = None) -> Plugins:
    """Load built-ins, then entry-point plugins, then ``extra`` (name → plugin object, for tests and embedding)."""
    pm = PluginManager()
    pm.add_builtins()
    if entry_points_enabled:
        pm.add_entry_points()
    for name, plugin in (extra or {}).items():
        pm.add(name, plugin)
    return pm.collect()
