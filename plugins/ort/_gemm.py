"""A quantized Gemm whose output stays float, as ORT's MatMulIntegerToFloat: one integer kernel instead of a float
Gemm reading a freshly dequantized weight.

ORT's CPU provider fuses ``DQ -> Gemm -> Q`` into QGemm, but a Gemm whose output is not quantized (a classifier's
head writing the graph output, which the passes keep float) stays a float Gemm reading a DequantizeLinear of its
int8 weight: the whole weight is dequantized on every run (EfficientNet-Lite0's 1280x1000 head: 0.3 ms of 3 ms at
batch 1). Rewritten as MatMul + Add, ORT's own MatMulAddFusion turns it back into that Gemm, so the lowering writes
the fused op itself: ``com.microsoft.MatMulIntegerToFloat(A_q, B_q, a_scale, b_scale, a_zero_point, b_zero_point,
bias)`` computes ``(A_q - a_zp) a_scale @ (B_q - b_zp) b_scale + bias`` in float, exactly what the Q/DQ graph
computes. For transB=1 the quantized weight is stored transposed (its per-channel axis moving with it).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter import lazy_weights
from converter.graph_edit import replace_repeated, unique_name
from converter.plugins.ort._graph import GraphIndex, attribute, in_default_domain, used_names

MS_DOMAIN = "com.microsoft"


def _dq(name: str, index: GraphIndex) -> onnx.NodeProto | None:
    node = index.producer.get(name)
    return node if node is not None and node.op_type == "DequantizeLinear" and in_default_domain(node) and len(node.input) == 3 else None


def _scalar_param(dq: onnx.NodeProto, index: GraphIndex) -> bool:
    scale, zero = index.value(dq.input[1]), index.value(dq.input[2])
    return scale is not None and zero is not None and scale.size == 1 and zero.size == 1


def _weight(dq: onnx.NodeProto, trans_b: bool, g: onnx.GraphProto, index: GraphIndex, used: set[str]) -> str | None:
    """The quantized weight as [K, N] (transposed into a new initializer for transB=1), per-tensor or per-N; or None."""
    w = index.inits.get(dq.input[0])
    scale = index.value(dq.input[1])
    if w is None or len(w.dims) != 2 or scale is None:
        return None
    axis = int(attribute(dq, "axis", 1)) % 2
    n_axis = 0 if trans_b else 1
    if scale.size != 1 and (axis != n_axis or scale.size != w.dims[n_axis]):
        return None
    if not trans_b:
        return dq.input[0]
    name = unique_name(f"{dq.input[0]}_t", used)
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(lazy_weights.to_array(w).T), name))
    return name


def _drop_unread(node: onnx.NodeProto, dqs: tuple[onnx.NodeProto, ...], index: GraphIndex, replaced: dict[int, list[onnx.NodeProto]]) -> None:
    """Mark for removal each of ``dqs`` that only ``node`` reads (and no graph output is)."""
    for dq in dqs:
        if all(r is node for r in index.readers.get(dq.output[0], [])) and dq.output[0] not in index.outputs:
            replaced[id(dq)] = []


def gemms_to_integer_matmul(g: onnx.GraphProto) -> list[str]:
    """Rewrite (in place) each main-graph Gemm that reads a per-tensor DequantizeLinear (activation) and a
    DequantizeLinear of a constant weight, and whose output no QuantizeLinear reads, as MatMulIntegerToFloat; the
    Gemm outputs rewritten (the caller imports the com.microsoft domain)."""
    index = GraphIndex.of(g)
    used = used_names(g)
    done: list[str] = []
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for node in g.node:
        if node.op_type != "Gemm" or not in_default_domain(node) or len(node.input) < 2 or not node.output:
            continue
        if attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0 or attribute(node, "transA", 0):
            continue
        a_dq, b_dq = _dq(node.input[0], index), _dq(node.input[1], index)
        if a_dq is None or b_dq is None or not _scalar_param(a_dq, index) or b_dq.input[0] not in index.inits:
            continue
        y = node.output[0]
        if any(r.op_type == "QuantizeLinear" for r in index.readers.get(y, [])):
            continue  # DQ -> Gemm -> Q: ORT's QGemm already
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        value = index.value(bias) if bias else None
        n = index.inits[b_dq.input[0]].dims[0 if attribute(node, "transB", 0) else 1]
        if bias and (value is None or value.ndim != 1 or value.size != n):
            continue  # MatMulIntegerToFloat's bias is one value per output column
        weight = _weight(b_dq, bool(attribute(node, "transB", 0)), g, index, used)
        if weight is None:
            continue
        inputs = [a_dq.input[0], weight, a_dq.input[1], b_dq.input[1], a_dq.input[2], b_dq.input[2], bias]
        replaced[id(node)] = [helper.make_node("MatMulIntegerToFloat", inputs, [y], name=unique_name(f"{node.name or y}_integer", used), domain=MS_DOMAIN)]
        _drop_unread(node, (a_dq, b_dq), index, replaced)
        done.append(y)
    if done:
        replace_repeated(g.node, [m for n in g.node for m in replaced.get(id(n), [n])])
    return done


def matmuls_with_bias(g: onnx.GraphProto) -> list[str]:
    """Rewrite (in place) each main-graph ``MatMul(DQ(a), DQ(W)) -> Add(bias)`` (a transformer's Linear: per-tensor
    activation, constant [K, N] weight, constant [N] bias, the MatMul read by the Add alone) as one
    MatMulIntegerToFloat with the bias: ORT fuses the MatMul alone and runs the Add as a pass of its own (MiniLM: 18 of
    them at each run). The Add outputs rewritten (the caller imports the com.microsoft domain)."""
    index = GraphIndex.of(g)
    used = used_names(g)
    done: list[str] = []
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for node in g.node:
        if node.op_type != "MatMul" or not in_default_domain(node) or len(node.input) != 2 or not node.output:
            continue
        a_dq, b_dq = _dq(node.input[0], index), _dq(node.input[1], index)
        readers = index.readers.get(node.output[0], [])
        if (a_dq is None or b_dq is None or not _scalar_param(a_dq, index) or b_dq.input[0] not in index.inits
                or len(readers) != 1 or node.output[0] in index.outputs):
            continue
        add = readers[0]
        if add.op_type != "Add" or not in_default_domain(add) or len(add.input) != 2 or list(add.input).count(node.output[0]) != 1:
            continue
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        value, w = index.value(bias), index.inits[b_dq.input[0]]
        if value is None or value.ndim != 1 or len(w.dims) != 2 or value.size != w.dims[1] or value.dtype != np.float32:
            continue  # one float value per output column, as MatMulIntegerToFloat adds it
        weight = _weight(b_dq, False, g, index, used)
        if weight is None:
            continue
        inputs = [a_dq.input[0], weight, a_dq.input[1], b_dq.input[1], a_dq.input[2], b_dq.input[2], bias]
        replaced[id(node)] = [helper.make_node("MatMulIntegerToFloat", inputs, [add.output[0]], name=unique_name(f"{node.name or add.output[0]}_integer", used),
                                               domain=MS_DOMAIN)]
        replaced[id(add)] = []
        _drop_unread(node, (a_dq, b_dq), index, replaced)
        done.append(add.output[0])
    if done:
        replace_repeated(g.node, [m for n in g.node for m in replaced.get(id(n), [n])])
    return done
