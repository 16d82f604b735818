"""cuda-python's runtime API, imported lazily, with error checking. Used by the TensorRT backend."""

from __future__ import annotations

import importlib
from typing import Any

from converter.errors import BackendError


def _runtime() -> Any:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python >= 12.6, then older releases
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendError("cuda-python is not installed (pip install cuda-python)")


class _Lazy:
    def __getattr__(self, name: str) -> Any:
        return getattr(_runtime(), name)


cudart: Any = _Lazy()


def check(result: Any, what: str) -> Any:
    """cuda-python returns (error, *values): raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA error in {what}: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
