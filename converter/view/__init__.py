"""``convert view``: a model in netron, served on this machine (the ``netron`` package, ``converter[view]``).

    serve.py    netron servers: start (each on a private folder), stop, wait for Ctrl-C, open a browser
    command.py  the ``convert view MODEL [--source [SOURCE]]`` subcommand (registered by this package)
"""

from __future__ import annotations

from converter.command_api import CommandRegistry
from converter.hookspecs import hookimpl
from converter.view.command import ViewCommand

__all__ = ["ViewCommand"]


@hookimpl
def converter_register_commands(registry: CommandRegistry) -> None:
    registry.add(ViewCommand)
