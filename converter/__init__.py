"""converter: passes over ONNX graphs, pluggable backends, golden checks.

The Python API mirrors the ``convert`` command (the CLI is a thin shell over it)::

    import converter
    result = converter.convert("model.onnx", "fold_constants,qdq", "ort", output="model.int8.onnx", calib_data="feeds.npz")
    print(result.report.table())
    converter.golden.check("model.int8.onnx", "golden/model")        # -> CaseResult, true when within tolerance
    qdq = converter.passes.get("qdq")(calibrator="entropy")          # passes and backends as objects

``load``, ``convert``, ``export``, ``bench``, ``Result``, ``get_pass`` and ``get_backend`` come from
:mod:`converter.api`; ``golden``, ``passes`` and ``plugins`` (the backends) are subpackages. They are imported on
first use, so ``import converter`` stays cheap. Errors are :class:`converter.errors.ConverterError` subclasses
carrying the CLI's exit code (``exc.exit_code``).
"""

from __future__ import annotations

import importlib
from typing import Any

from converter.version import __version__

_API = ("Result", "bench", "convert", "export", "get_backend", "get_pass", "load")
_SUBMODULES = ("api", "errors", "golden", "passes", "plugins", "progress", "reporting")


def __getattr__(name: str) -> Any:
    if name in _API:
        from converter import api

        return getattr(api, name)
    if name in _SUBMODULES:
        return importlib.import_module(f"converter.{name}")
    raise AttributeError(f"module 'converter' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_SUBMODULES])


__all__ = ["Result", "__version__", "bench", "convert", "export", "get_backend", "get_pass", "load"]
