"""The ``ort`` backend: an .onnx with ONNX Runtime's graph optimizations applied, run on ONNX Runtime.

Public contract: the backend and its options, :class:`OrtRunner` (any .onnx file on ONNX
Runtime, which the ``onnx`` backend reuses) and :func:`lower_for_ort_cpu` (the Q/DQ lowering
for ORT's CPU kernels).
"""

from converter.plugins.ort._backend import OrtBackend, OrtOptions, parse_provider_options
from converter.plugins.ort._lowering import Lowering, lower_for_ort_cpu
from converter.plugins.ort._runner import OrtRunner, ort_specs

__all__ = ["Lowering", "OrtBackend", "OrtOptions", "OrtRunner", "lower_for_ort_cpu", "ort_specs", "parse_provider_options"]
