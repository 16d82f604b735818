"""Passes and backends as Python objects: ``get_pass("qdq")(calibrator="entropy")``, ``get_backend("ort")(threads=2)``.

Options are given as Python values and checked exactly as the pipeline text's are (same parser,
same ranges, same one-line errors: a :class:`~converter.errors.UsageError`), so an object built here
behaves as ``-p 'qdq{calibrator=entropy}'`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from converter.backend_api import Backend
from converter.options import build_options, option_text
from converter.pass_api import Pass
from converter.plugin_manager import Plugins, load_plugins


@cache
def default_plugins() -> Plugins:
    """Every installed plugin (built-ins and entry points), loaded once per process."""
    return load_plugins()


def options_from(options_cls: type, values: Mapping[str, Any], owner: str) -> Any:
    """``options_cls`` from Python values (checked as text options are); ``None`` values are left at their defaults."""
    return build_options(options_cls, {k: option_text(v) for k, v in values.items() if v is not None}, owner)


def _factory(cls: type, kind: str, name: str) -> Callable[..., Any]:
    """``cls`` as a callable taking its options as keyword arguments (checked as ``name{k=v}`` text is)."""

    def make(**options: Any) -> Any:
        return cls(options_from(cls.Options, options, f"{kind} '{name}'"))

    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"{cls.summary}\n\nOptions: {', '.join(getattr(cls.Options, '__dataclass_fields__', {})) or 'none'}."
    return make


def get_pass(name: str, plugins: Plugins | None = None) -> Callable[..., Pass]:
    """The pass registered as ``name``: call it with options to get an instance (``get_pass("qdq")(calibrator="entropy")``)."""
    return _factory((plugins or default_plugins()).passes.get(name).cls, "pass", name)


def get_backend(name: str, plugins: Plugins | None = None) -> Callable[..., Backend]:
    """The backend registered as ``name``: call it with options to get an instance (``get_backend("ort")(threads=2)``)."""
    return _factory((plugins or default_plugins()).backends.get(name).cls, "backend", name)
