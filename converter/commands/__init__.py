"""The built-in subcommands, registered through the hook third-party commands use.

``passes``/``backends``/``plugins`` (listings), ``inspect``, ``golden record|check`` and
``check`` (a backend's lint). ``export`` and ``debug`` register themselves from their own
packages. Adding a subcommand: a :class:`~converter.command_api.Command` subclass in a
module here (or in the package it belongs to) and one ``registry.add`` line.
"""

from __future__ import annotations

from converter.command_api import CommandRegistry
from converter.commands.check import CheckCommand
from converter.commands.golden import GoldenCommand
from converter.commands.inspect import InspectCommand
from converter.commands.listing import BackendsCommand, PassesCommand, PluginsCommand
from converter.hookspecs import hookimpl


@hookimpl
def converter_register_commands(registry: CommandRegistry) -> None:
    for cls in (PassesCommand, BackendsCommand, PluginsCommand, InspectCommand, GoldenCommand, CheckCommand):
        registry.add(cls)
