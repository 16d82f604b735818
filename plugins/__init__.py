"""Built-in backends, a module or package each, registered through the same hooks third parties use.

Adding a built-in backend: a module (or a package whose ``__init__`` is its public contract)
in this folder, and one ``registry.add`` line below. Nothing in ``converter/`` changes.
"""

from __future__ import annotations

from collections.abc import Callable

from converter.api.objects import get_backend
from converter.backend_api import Backend
from converter.flags import OptionRegistry
from converter.hookspecs import hookimpl
from converter.plugins.onnx_file import OnnxFileBackend
from converter.plugins.ort import OrtBackend
from converter.plugins.tensorrt import SHAPE_FLAGS, TensorRTBackend
from converter.registry import BackendRegistry


@hookimpl
def converter_register_backends(registry: BackendRegistry) -> None:
    registry.add(OrtBackend)
    registry.add(OnnxFileBackend)
    registry.add(TensorRTBackend)


@hookimpl
def converter_add_options(registry: OptionRegistry) -> None:
    for flag in SHAPE_FLAGS:
        registry.add_backend_flag(flag)


def get(name: str) -> Callable[..., Backend]:
    """The backend registered as ``name`` (built-in or a plugin's), as a factory taking its options as keyword arguments:
    ``converter.plugins.get("ort")(threads=2)``. Unknown names and options are UsageErrors."""
    return get_backend(name)
