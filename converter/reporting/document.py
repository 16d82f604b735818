"""The report document every command emits: ``--json`` on stdout, ``--report`` as an HTML page.

A document is one JSON object: ``{"schema": "converter.report/1", "command": NAME, "converter": {...}, ...}``
and the command's own fields. ``report-1.schema.json`` beside this module is its JSON Schema; the
schema id changes (``/2``) only when a field is removed or changes meaning, never when one is added.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_ID = "converter.report/1"


@cache
def _versions() -> dict[str, str]:
    from converter.version import __version__

    found = {"converter": __version__, "python": platform.python_version()}
    for name in ("onnx", "onnxruntime", "numpy"):
        mod = sys.modules.get(name)
        version = getattr(mod, "__version__", None) if mod is not None else None
        if version:
            found[name] = str(version)
    return found


def document(command: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` in the envelope: schema id, command name (``golden check``, ``bench``), versions of this run."""
    return {"schema": SCHEMA_ID, "command": command, "versions": _versions(), **data}


def to_text(doc: dict[str, Any]) -> str:
    """Strict JSON: numpy scalars as numbers, non-finite floats (NaN, inf) as null."""
    return json.dumps(_plain(doc), indent=2, allow_nan=False) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()  # numpy scalars
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def emit(command: str, data: dict[str, Any]) -> dict[str, Any]:
    """Print ``data`` as a report document on stdout (what ``--json`` does); returns the document."""
    doc = document(command, data)
    sys.stdout.write(to_text(doc))
    sys.stdout.flush()
    return doc


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of report documents (``converter.report/1``)."""
    text = resources.files("converter.reporting").joinpath("report-1.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate(doc: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``doc`` does not follow the schema (needs the ``jsonschema`` package)."""
    import jsonschema

    jsonschema.validate(doc, schema())
