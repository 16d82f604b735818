"""The Python API: what the ``convert`` command does, as functions with typed keyword arguments.

    flow.py     load(), convert() -> Result (the report objects the command prints)
    objects.py  get_pass(name)(**options), get_backend(name)(**options), default_plugins()
    tools.py    export(), bench()

``converter.load``, ``converter.convert``, ``converter.export``, ``converter.bench`` and
``converter.golden.record`` / ``check`` are the same functions, importable from the package. The
CLI is a thin shell over them: each subcommand parses its flags and calls its function here.
"""

from __future__ import annotations

from converter.api.flow import Result, convert, load
from converter.api.objects import default_plugins, get_backend, get_pass
from converter.api.tools import bench, export

__all__ = ["Result", "bench", "convert", "default_plugins", "export", "get_backend", "get_pass", "load"]
