"""Weights of the qdq pass: read constants (initializers and Constant nodes), quantize them ourselves.

Weights are quantized here, not by a QuantizeLinear at run time, so they are
clamped to [-127, 127] (symmetric; QuantizeLinear would saturate to -128) and
stored as int8 initializers read through a DequantizeLinear: per output channel
(``axis``) or per tensor, zero point 0, scale = amax / 127 (1.0 for a channel
that is all zeros, so every scale stays positive).
"""

from __future__ import annotations

import numpy as np
import onnx

from converter import lazy_weights
from converter.errors import PassRefused

INT8_MAX = 127


def constant_nodes(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Output name -> Constant node, for Constant nodes that hold a tensor value."""
    out = {}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
            out[n.output[0]] = n
    return out


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node (any of its attribute forms), None for a sparse value."""
    for attr in node.attribute:
        if attr.name == "value":
            return lazy_weights.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def constant_specs(graph: onnx.GraphProto) -> dict[str, tuple[int, int]]:
    """Constant tensors of the graph: name -> (element type, rank), from initializers and Constant nodes."""
    specs = {t.name: (t.data_type, len(t.dims)) for t in graph.initializer}
    for name, node in constant_nodes(graph).items():
        value = constant_value(node)
        if value is not None:
            specs[name] = (onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.ndim)
    return specs


def read_constant(graph: onnx.GraphProto, name: str, model_dir: str | None = None) -> np.ndarray:
    for t in graph.initializer:
        if t.name == name:
            return lazy_weights.to_array(t, base_dir=model_dir or "")
    node = constant_nodes(graph).get(name)
    value = constant_value(node) if node is not None else None
    if value is None:
        raise KeyError(f"'{name}' is not a dense constant of the graph")
    return value


def quantize_weight(w: np.ndarray, axis: int | None, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``w``: (int8 values in [-127, 127], float32 scales: one per channel of ``axis``, or a scalar)."""
    w = np.asarray(w, dtype=np.float32)
    if w.size and not np.isfinite(w).all():
        raise PassRefused(f"weight '{name}' holds NaN or inf; fix the model or keep its reader in float (qdq{{exclude=[...]}})")
    if axis is None:
        amax = np.array(np.max(np.abs(w)) if w.size else 0.0, dtype=np.float32)
        expand = amax
    else:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=reduce).astype(np.float32) if w.size else np.zeros(w.shape[axis], np.float32)
        expand = amax.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    scale = np.where(amax > 0, amax / np.float32(INT8_MAX), np.float32(1.0)).astype(np.float32)
    scale_b = np.where(expand > 0, expand / np.float32(INT8_MAX), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale_b), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale
