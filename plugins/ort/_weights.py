"""Weights read with uint8 activations stored as uint8 with zero point 128 (U8U8), for CPUs whose U8S8 kernels saturate.

Weights read with a uint8 activation (by Conv, MatMul, Gemm: the ops ORT fuses into
QLinearConv, QLinearMatMul/MatMulIntegerToFloat, QGemm) stay int8 (U8S8) where ORT's
U8S8 kernels are exact, and become uint8 with zero point 128 (U8U8) where they saturate
(x86-64 without VNNI; see ``_cpu``): w_u8 = w_s8 + 128, the same grid. In that form a
float Conv/Gemm weight that ORT would quantize itself (its WeightBiasQuantization
transformer: per-tensor int8, when the input is dequantized and the output reaches a
QuantizeLinear through Relu/Clip only) is quantized here, per output channel, symmetric
(scale amax/127), as uint8/128. Only where ORT would: a layer whose input 0 was float in
the canonical graph (``qdq`` left it float) keeps its float weight even once the lowering
has given that input a pair.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import numpy_helper

from converter import lazy_weights
from converter.graph_edit import replace_repeated, unique_name
from converter.plugins.ort._graph import GraphIndex, const_value, in_default_domain, used_names

INTEGER_OPS = ("Conv", "MatMul", "Gemm")
"""Ops whose (activation, weight) inputs 0 and 1 ORT's CPU provider fuses into integer kernels."""


def uint8_dq(node: onnx.NodeProto | None, graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """``node`` is a DequantizeLinear of a uint8 tensor with one (per-tensor) scale."""
    if node is None or node.op_type != "DequantizeLinear" or not in_default_domain(node) or len(node.input) < 3:
        return False
    scale, zp = const_value(graph, inits, node.input[1]), const_value(graph, inits, node.input[2])
    return scale is not None and scale.size == 1 and zp is not None and zp.dtype == np.uint8


def float_input_layers(g: onnx.GraphProto) -> set[str]:
    """The output names of the Conv/MatMul/Gemm nodes whose input 0 is not read through a DequantizeLinear: layers ``qdq`` left float."""
    producer = GraphIndex.of(g).producer
    out: set[str] = set()
    for node in g.node:
        if node.op_type in INTEGER_OPS and in_default_domain(node) and node.input and node.output:
            p = producer.get(node.input[0])
            if p is None or p.op_type != "DequantizeLinear" or not in_default_domain(p):
                out.add(node.output[0])
    return out


def _reaches_q(node: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]]) -> bool:
    """ORT's WeightBiasQuantization condition: one reader each step, through Relu/Clip only, to a QuantizeLinear."""
    while len(node.output) == 1 and len(readers.get(node.output[0], [])) == 1:
        node = readers[node.output[0]][0]
        if node.op_type == "QuantizeLinear":
            return True
        if node.op_type not in ("Relu", "Clip"):
            return False
    return False


def _quantize_u8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel quantization as uint8/128: (w / scale rounded, clamped to +-127, plus 128; scale = amax/127)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=reduce).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    shape = [-1 if i == axis else 1 for i in range(w.ndim)]
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), scale


def weights_to_u8(g: onnx.GraphProto, float_layers: Collection[str] = ()) -> list[str]:
    """Store the weights of Conv/MatMul/Gemm whose activation input is uint8 as uint8/128; the names of those weights.

    An int8 weight read through a DequantizeLinear is shifted (w + 128, zero point + 128,
    same scale): the DequantizeLinear's output does not change. A float Conv/Gemm weight
    that ORT would quantize to int8 itself is quantized per output channel instead, unless
    the layer (by output name) is in ``float_layers``: one that was float in the canonical
    graph (:func:`float_input_layers` of it), which stays float.
    """
    index = GraphIndex.of(g)
    inits, producer, readers = index.inits, index.producer, index.readers
    used = used_names(g)
    done: list[str] = []
    shifted: set[str] = set()
    new_nodes: list[onnx.NodeProto] = []
    for node in list(g.node):
        if node.op_type not in INTEGER_OPS or not in_default_domain(node) or len(node.input) < 2:
            continue
        if not uint8_dq(producer.get(node.input[0]), g, inits):
            continue
        w_name = node.input[1]
        dq = producer.get(w_name)
        if dq is not None and dq.op_type == "DequantizeLinear" and in_default_domain(dq) and dq.input[0] in inits:
            w = lazy_weights.to_array(inits[dq.input[0]])
            zp = const_value(g, inits, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int8)
            if w.dtype != np.int8 or zp is None or zp.dtype != np.int8 or dq.output[0] in shifted:
                continue
            q_name, z_name = unique_name(f"{dq.input[0]}_u8", used), unique_name(f"{dq.input[0]}_u8_zero_point", used)
            g.initializer.append(numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), q_name))
            g.initializer.append(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), z_name))
            done.append(dq.input[0])
            dq.input[0] = q_name
            if len(dq.input) > 2:
                dq.input[2] = z_name
            else:
                dq.input.append(z_name)
            shifted.add(dq.output[0])
        elif node.op_type in ("Conv", "Gemm") and node.output[0] not in float_layers and w_name in inits and inits[w_name].data_type == onnx.TensorProto.FLOAT and _reaches_q(node, readers):
            w = lazy_weights.to_array(inits[w_name])
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if node.op_type == "Conv" or trans_b else 1
            q, scale = _quantize_u8(w, axis)
            q_name, s_name, z_name, dq_out = (unique_name(f"{w_name}_{part}", used) for part in ("u8", "u8_scale", "u8_zero_point", "dequantized"))
            g.initializer.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name),
                                  numpy_helper.from_array(np.full(scale.shape, 128, np.uint8), z_name)])
            new_nodes.append(onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=unique_name(f"{w_name}_DequantizeLinear", used), axis=axis))
            for reader in readers.get(w_name, []):  # every reader of this float weight: the same grid for all
                if reader.op_type == node.op_type and reader.output[0] not in float_layers and len(reader.input) > 1 and reader.input[1] == w_name and uint8_dq(producer.get(reader.input[0]), g, inits) and _reaches_q(reader, readers):
                    reader.input[1] = dq_out
            done.append(w_name)
    if new_nodes:  # their inputs are initializers: first in topological order
        replace_repeated(g.node, [*new_nodes, *g.node])
    return done
