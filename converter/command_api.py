"""The Command contract: a subcommand of ``convert`` contributed by a plugin (built-in or not).

As pytest and tox let plugins add commands and options, a plugin registers a
:class:`Command` subclass in ``converter_register_commands``. The CLI gives it its own
argparse parser (with the common ``--json``, ``--debug``, ``-v``), calls
:meth:`Command.add_arguments`, and on ``convert NAME ...`` calls :meth:`Command.run`
with the parsed arguments and the loaded plugins. ``run`` returns the exit code; user
errors are raised as :class:`~converter.errors.ConverterError` subclasses.
"""

from __future__ import annotations

import argparse
import json
import sys
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from converter.errors import PluginError, UsageError

if TYPE_CHECKING:
    from converter.plugin_manager import Plugins

RESERVED = frozenset({"help"})


class ArgParser(argparse.ArgumentParser):
    """argparse that raises a one-line UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def add_common(p: argparse.ArgumentParser) -> None:
    """``--json``, ``--debug``, ``-v``, ``-q``: every command has them."""
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout (schema converter.report/1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", help="log what each step does (stderr)")


class Command(ABC):
    """Base class of every subcommand; subclasses set ``name`` and ``help``."""

    name: ClassVar[str]
    help: ClassVar[str]
    """One line for ``convert --help``."""
    description: ClassVar[str] = ""
    """Longer text for ``convert NAME --help`` (default: ``help``)."""
    epilog: ClassVar[str] = ""

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments (subcommands via ``parser.add_subparsers``)."""

    @abstractmethod
    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        """Do the work; return the exit code."""


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts (``--workers``, ``--top``): an integer >= 1, or a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be >= 1")
    return value


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout, as it is (built-in commands print versioned report
    documents through :func:`converter.reporting.emit`; a plugin command may use either)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class CommandRegistry:
    """Subcommands by name; rejects duplicates and names that are not words."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[type[Command], str]] = {}
        self.current_source = "builtin"

    def add(self, cls: type[Command]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Command)):
            raise PluginError(f"plugin '{self.current_source}' registered {cls!r}, which is not a Command subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name.replace("-", "").isalnum() or name.startswith("-") or name in RESERVED:
            raise PluginError(f"plugin '{self.current_source}' registered a command with an invalid name {name!r}")
        if not isinstance(getattr(cls, "help", None), str):
            raise PluginError(f"plugin '{self.current_source}': command '{name}' has no one-line help")
        if name in self._entries:
            raise PluginError(f"plugin '{self.current_source}' registers command '{name}', already registered by '{self._entries[name][1]}'")
        self._entries[name] = (cls, self.current_source)

    def get(self, name: str) -> type[Command] | None:
        entry = self._entries.get(name)
        return entry[0] if entry else None

    def source(self, name: str) -> str:
        return self._entries[name][1]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def snapshot(self) -> dict[str, tuple[type[Command], str]]:
        return dict(self._entries)

    def restore(self, saved: dict[str, tuple[type[Command], str]]) -> None:
        self._entries = dict(saved)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
