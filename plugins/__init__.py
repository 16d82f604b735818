"""Built-in backends, a module or package each, registered through the same hooks third parties use.

Adding a built-in backend: a module (or a package whose ``__init__`` is its public contract)
in this folder, and one ``registry.add`` line below. Nothing in ``converter/`` changes.
"""

from __future__ import annotations

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
