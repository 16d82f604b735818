"""Models that already hold Q/DQ (quantization-aware training, or quantized elsewhere).

A graph with a QuantizeLinear, or a DequantizeLinear of a tensor computed at run
time, already says where it is quantized: the qdq pass keeps it as it is.
``qat_check`` verifies what TensorRT requires of such a graph: every zero point
0 and every scale a finite, positive constant.
"""

from __future__ import annotations

import numpy as np
import onnx

from converter import lazy_weights
from converter.graph_info import iter_graphs
from converter.passes.qdq._weights import constant_nodes, constant_value

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray | None]:
    values: dict[str, np.ndarray | None] = {t.name: lazy_weights.to_array(t) for t in graph.initializer}
    for name, node in constant_nodes(graph).items():
        values[name] = constant_value(node)
    return values


def activation_qdq_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the Q/DQ nodes that quantize run-time tensors (empty for a float or weight-only-int8 model)."""
    found = []
    for graph in iter_graphs(model.graph):
        consts = {t.name for t in graph.initializer} | set(constant_nodes(graph))
        for i, n in enumerate(graph.node):
            if n.op_type == "QuantizeLinear" or (n.op_type == "DequantizeLinear" and n.input[0] not in consts):
                found.append(n.name or f"{n.op_type}_{i}")
    return found


def _problems(node: onnx.NodeProto, label: str, consts: dict[str, np.ndarray | None]) -> list[str]:
    out = []
    scale_name = node.input[1] if len(node.input) > 1 else ""
    scale = consts.get(scale_name)
    if scale is None:
        out.append(f"{label}: scale '{scale_name}' is not a constant")
    elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        out.append(f"{label}: scale not finite and positive (min {float(np.min(scale)):.3g})")
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if zp_name:
        zp = consts.get(zp_name)
        if zp is None:
            out.append(f"{label}: zero point '{zp_name}' is not a constant")
        elif np.any(zp != 0):
            nz = np.asarray(zp).ravel()
            out.append(f"{label}: zero point {int(nz[np.flatnonzero(nz)[0]])} (must be 0)")
    return out


def qat_problems(model: onnx.ModelProto) -> list[str]:
    """One entry per Q/DQ node whose zero point is not 0 or whose scale is not finite/positive."""
    problems = []
    for graph in iter_graphs(model.graph):
        consts = _constants(graph)
        for i, n in enumerate(graph.node):
            if n.op_type in QDQ_OPS:
                problems.extend(_problems(n, n.name or f"{n.op_type}_{i}", consts))
    return problems
