"""Weights read with uint8 activations in a form ORT's integer kernels compute exactly on CPUs whose U8S8 kernels saturate.

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

The other exact form is 7-bit weights (``s7``, ORT's quantizer calls it ``reduce_range``): int8 values within
+-63, so a pair of u8*s8 products, at most 2*255*63 = 32130, fits the int16 that ``VPMADDUBSW`` saturates
at; the fast U8S8 kernels then compute exactly. Each channel's int8 weights are re-expressed on a grid of
half the resolution (w7 = round(w8 * 63 / m), scale * m / 63, m the channel's largest |w8|; a channel
already within +-63 is kept as it is); a float weight ORT would quantize itself is quantized the same way
per output channel, scale amax/63.
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


def _channel_max(w: np.ndarray, axis: int | None) -> np.ndarray:
    """Largest |w| per slice along ``axis`` (keeping dims for broadcasting), or over all of ``w`` (axis None)."""
    if axis is None:
        return np.max(np.abs(w.astype(np.int16))).reshape([1] * w.ndim)
    return np.max(np.abs(w.astype(np.int16)), axis=tuple(i for i in range(w.ndim) if i != axis), keepdims=True)


def _to_s7(w: np.ndarray, scale: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and their scale (one, or one per slice along ``axis``) on a 7-bit grid: (values within +-63, scale)."""
    m = _channel_max(w, axis).astype(np.float32)
    ratio = np.where(m > 63, m / np.float32(63), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w.astype(np.float32) / ratio), -63, 63).astype(np.int8)
    return q, (scale.astype(np.float32) * ratio.reshape(scale.shape)).astype(np.float32)


def _quantize_s7(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel quantization to 7 bits: (w / scale rounded, within +-63; scale = amax/63)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=reduce).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(63), np.float32(1)).astype(np.float32)
    shape = [-1 if i == axis else 1 for i in range(w.ndim)]
    return np.clip(np.rint(w / scale.reshape(shape)), -63, 63).astype(np.int8), scale


def weights_to_u8(g: onnx.GraphProto, float_layers: Collection[str] = ()) -> list[str]:
    """:func:`store_weights` as uint8/128."""
    return store_weights(g, "u8", float_layers)


def store_weights(g: onnx.GraphProto, form: str, float_layers: Collection[str] = ()) -> list[str]:
    """Store the weights of Conv/MatMul/Gemm whose activation input is uint8 as uint8/128 (``form`` u8) or as 7-bit
    int8 (``s7``); the names of those weights.

    u8: an int8 weight read through a DequantizeLinear is shifted (w + 128, zero point + 128,
    same scale): the DequantizeLinear's output does not change. s7: it is put on a 7-bit grid (:func:`_to_s7`). A float Conv/Gemm weight
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
            if form == "s7":
                scale = const_value(g, inits, dq.input[1])
                if np.any(zp != 0) or scale is None or dq.input[1] not in inits:
                    continue  # a zero point moves the raw values the kernel multiplies: left as it is
                axis = None if scale.size == 1 else next((a.i for a in dq.attribute if a.name == "axis"), 1) % w.ndim
                q7, s7 = _to_s7(w, scale, axis)
                q_name, s_name = unique_name(f"{dq.input[0]}_s7", used), unique_name(f"{dq.input[0]}_s7_scale", used)
                g.initializer.extend([numpy_helper.from_array(q7, q_name), numpy_helper.from_array(s7.reshape(scale.shape), s_name)])
                done.append(dq.input[0])
                dq.input[0], dq.input[1] = q_name, s_name
                shifted.add(dq.output[0])
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
            q, scale = _quantize_s7(w, axis) if form == "s7" else _quantize_u8(w, axis)
            zero = np.zeros(scale.shape, np.int8) if form == "s7" else np.full(scale.shape, 128, np.uint8)
            q_name, s_name, z_name, dq_out = (unique_name(f"{w_name}_{part}", used) for part in (form, f"{form}_scale", f"{form}_zero_point", "dequantized"))
            g.initializer.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name), numpy_helper.from_array(zero, z_name)])
            new_nodes.append(onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=unique_name(f"{w_name}_DequantizeLinear", used), axis=axis))
            for reader in readers.get(w_name, []):  # every reader of this float weight: the same grid for all
                if reader.op_type == node.op_type and reader.output[0] not in float_layers and len(reader.input) > 1 and reader.input[1] == w_name and uint8_dq(producer.get(reader.input[0]), g, inits) and _reaches_q(reader, readers):
                    reader.input[1] = dq_out
            done.append(w_name)
    if new_nodes:  # their inputs are initializers: first in topological order
        replace_repeated(g.node, [*new_nodes, *g.node])
    return done
