"""Flags of ``convert`` that plugins contribute: inputs for passes, and flags that become backend options.

A plugin declares them in ``converter_add_options(registry)``; the CLI adds each to the
``convert`` parser (and so to ``export --then``), and the values reach their consumer
through one general path, whatever the plugin:

- a :class:`PassInput` value goes into :attr:`PassContext.inputs <converter.pass_api.PassContext.inputs>`;
  a pass reads it with ``ctx.inputs.get(MY_INPUT)``, typed by the declaration;
- a :class:`BackendFlag` value is folded into the chosen backend's options
  (``--batch 1..8..32`` is ``-b 'tensorrt{batch=1..8..32}'``); a backend without that
  option rejects it like any unknown option.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from converter.errors import PluginError

T = TypeVar("T")


@dataclass(frozen=True)
class PassInput(Generic[T]):
    """A value the user gives on the command line for passes, e.g. ``--calib-data``."""

    key: str
    """Where it is stored in ``ctx.inputs`` (also the argparse dest)."""
    flag: str
    """The long flag, e.g. ``--calib-data``."""
    help: str
    default: T
    switch: bool = False
    """A flag without a value (``store_true``); ``default`` must then be False."""
    metavar: str | None = None
    group: str = "pass inputs"


@dataclass(frozen=True)
class BackendFlag:
    """A flag whose value becomes the backend option ``option``, e.g. ``--min-shapes`` → ``min_shapes``."""

    option: str
    flag: str
    help: str
    metavar: str | None = None
    group: str = "backend options"


class PassInputs:
    """The values of every registered :class:`PassInput`, read with the declaration as a typed key."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values = dict(values or {})

    def get(self, key: PassInput[T]) -> T:
        value = self._values.get(key.key, key.default)
        return key.default if value is None else value

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


class OptionRegistry:
    """What ``converter_add_options`` fills; rejects two plugins claiming one flag."""

    def __init__(self) -> None:
        self._pass_inputs: dict[str, PassInput[Any]] = {}
        self._backend_flags: dict[str, BackendFlag] = {}
        self._owners: dict[str, str] = {}
        self.current_source = "builtin"

    def _claim(self, flag: str, what: object) -> bool:
        if not flag.startswith("--") or len(flag) < 4:
            raise PluginError(f"plugin '{self.current_source}': flag {flag!r} must be a long option such as --my-flag")
        known = self._pass_inputs.get(flag) or self._backend_flags.get(flag)
        if known == what:
            return False  # the same declaration registered twice (e.g. by two passes sharing an input)
        if known is not None:
            raise PluginError(f"plugin '{self.current_source}' adds {flag}, already added by '{self._owners[flag]}'")
        self._owners[flag] = self.current_source
        return True

    def add_pass_input(self, item: PassInput[Any]) -> None:
        if item.switch and item.default is not False:
            raise PluginError(f"plugin '{self.current_source}': switch {item.flag} must default to False")
        if self._claim(item.flag, item):
            self._pass_inputs[item.flag] = item

    def add_backend_flag(self, item: BackendFlag) -> None:
        if self._claim(item.flag, item):
            self._backend_flags[item.flag] = item

    @property
    def pass_inputs(self) -> list[PassInput[Any]]:
        return list(self._pass_inputs.values())

    @property
    def backend_flags(self) -> list[BackendFlag]:
        return list(self._backend_flags.values())

    def flags(self) -> set[str]:
        return set(self._owners)

    def snapshot(self) -> tuple[dict[str, Any], ...]:
        return dict(self._pass_inputs), dict(self._backend_flags), dict(self._owners)

    def restore(self, saved: tuple[dict[str, Any], ...]) -> None:
        self._pass_inputs, self._backend_flags, self._owners = (dict(s) for s in saved)

    def add_to_parser(self, parser: argparse.ArgumentParser, reserved: Callable[[str], bool]) -> None:
        """Add every flag to ``parser``; a flag the core already uses is a plugin error."""
        groups: dict[str, Any] = {}

        def group(title: str) -> Any:
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            return groups[title]

        for item in self.pass_inputs:
            if reserved(item.flag):
                raise PluginError(f"plugin '{self._owners[item.flag]}' adds {item.flag}, which convert already has")
            if item.switch:
                group(item.group).add_argument(item.flag, dest=_dest(item.key), action="store_true", help=item.help)
            else:
                group(item.group).add_argument(item.flag, dest=_dest(item.key), metavar=item.metavar, help=item.help)
        for flag in self.backend_flags:
            if reserved(flag.flag):
                raise PluginError(f"plugin '{self._owners[flag.flag]}' adds {flag.flag}, which convert already has")
            group(flag.group).add_argument(flag.flag, dest=_dest(flag.option, "backend"), metavar=flag.metavar, help=flag.help)

    def pass_input_values(self, args: argparse.Namespace) -> dict[str, Any]:
        return {i.key: getattr(args, _dest(i.key), None) for i in self.pass_inputs if getattr(args, _dest(i.key), None) not in (None, False)}

    def backend_flag_values(self, args: argparse.Namespace) -> dict[str, tuple[str, str]]:
        """option → (flag, value) for every backend flag given."""
        out = {}
        for f in self.backend_flags:
            value = getattr(args, _dest(f.option, "backend"), None)
            if value is not None:
                out[f.option] = (f.flag, value)
        return out


def _dest(key: str, kind: str = "input") -> str:
    return f"plugin_{kind}__{key}"
