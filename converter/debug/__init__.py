"""``convert debug``: where a lowered (Q/DQ int8 or fp16) model loses accuracy, layer by layer.

    accuracy.py  the streamed per-tensor comparison of a float model and its lowered version
    command.py   the ``convert debug accuracy`` subcommand (registered by this package)
"""

from __future__ import annotations

from converter.command_api import CommandRegistry
from converter.debug.accuracy import AccuracyReport, TensorError, compare_layers
from converter.debug.command import DebugCommand
from converter.hookspecs import hookimpl

__all__ = ["AccuracyReport", "DebugCommand", "TensorError", "compare_layers"]


@hookimpl
def converter_register_commands(registry: CommandRegistry) -> None:
    registry.add(DebugCommand)
