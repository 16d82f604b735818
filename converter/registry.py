"""Registries of passes and backends, filled by plugins through hooks.

One registry instance per plugin manager: no global mutable state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Generic, TypeVar

from converter.backend_api import Backend
from converter.errors import PluginError, UsageError, shorten
from converter.pass_api import Pass

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    cls: type[T]
    source: str
    """The plugin that registered it ("builtin" or the entry-point name)."""


class _Registry(Generic[T]):
    kind: str = "item"
    base: type

    def __init__(self) -> None:
        self._entries: dict[str, Entry[T]] = {}
        self.current_source = "builtin"

    def add(self, cls: type[T]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginError(f"plugin '{self.current_source}' registered {cls!r}, which is not a {self.base.__name__} subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{self.current_source}' registered {cls.__name__} without a name")
        if not isinstance(getattr(cls, "summary", None), str):
            raise PluginError(f"plugin '{self.current_source}': {self.kind} '{name}' has no one-line summary")
        if not dataclasses.is_dataclass(cls.Options):  # type: ignore[attr-defined]
            raise PluginError(f"plugin '{self.current_source}': options of {self.kind} '{name}' are not a dataclass")
        if name in self._entries:
            prev = self._entries[name].source
            raise PluginError(f"plugin '{self.current_source}' registers {self.kind} '{name}', already registered by '{prev}'")
        self._entries[name] = Entry(cls, self.current_source)

    def snapshot(self) -> dict[str, Entry[T]]:
        return dict(self._entries)

    def restore(self, snapshot: dict[str, Entry[T]]) -> None:
        self._entries = dict(snapshot)

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "none"
            raise UsageError(f"unknown {self.kind} '{shorten(name, 60)}'; available: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries


class PassRegistry(_Registry[Pass]):
    kind = "pass"
    base = Pass


class BackendRegistry(_Registry[Backend]):
    kind = "backend"
    base = Backend
