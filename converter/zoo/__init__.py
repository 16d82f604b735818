"""``convert zoo check DIR...``: run a zoo of golden cases, each case x each check of its manifest.

    cases.py     discovery: the case x check units, in a fixed order; which need a GPU
    sources.py   each case's model, resolved and hash-checked once; what is shipped to Ray workers
    runner.py    one unit: convert into a temporary folder, compare, a verdict as a plain dict
    local.py     serially in this process, or --workers N spawned worker processes
    ray_pool.py  --ray auto|ADDRESS: one Ray task per unit, models and cases via the object store
    report.py    the verdict table (discovery order), the summary, the JSON data
    junit.py     --junit-xml: JUnit XML for CI
    command.py   the ``convert zoo check`` subcommand (registered by this package)
"""

from __future__ import annotations

from converter.command_api import CommandRegistry
from converter.hookspecs import hookimpl
from converter.zoo.command import ZooCommand

__all__ = ["ZooCommand"]


@hookimpl
def converter_register_commands(registry: CommandRegistry) -> None:
    registry.add(ZooCommand)
