"""Lower the canonical symmetric-int8 Q/DQ graph to the forms ONNX Runtime's CPU kernels fuse.

The passes write what every backend reads (DESIGN.md, Precision): symmetric int8, zero
point 0. ONNX Runtime's CPU execution provider turns ``DequantizeLinear → Conv →
QuantizeLinear`` into ``QLinearConv`` only when nothing sits between the Conv and its
Q; a ReLU/ReLU6 (``Relu``, ``Clip(min>=0)``) does, unless the Q's own range makes it
redundant, which ORT then removes (its ClipQuantFusion/ReluQuantFusion). A symmetric
int8 Q spans [-amax, amax], so the activation stays; ORT falls back to float Conv with
Q/DQ around it, slower than fp32.

For every activation Q/DQ pair whose input is non-negative by construction (the output
of Relu, or of Clip with a constant min >= 0) this lowering re-expresses the pair as
uint8 with zero point 0 and scale amax/255: the same range [0, amax], twice the
resolution, and the activation becomes redundant so ORT fuses the Conv. Every other
activation pair becomes uint8 with zero point 128 and the same scale: exactly the same
grid (q_u8 = q_s8 + 128, both saturating at the same values), in the u8 activation /
s8 weight form ORT's CPU kernels are fastest with.

Weights read with a uint8 activation (by Conv, MatMul, Gemm: the ops ORT fuses into
QLinearConv, QLinearMatMul/MatMulIntegerToFloat, QGemm) stay int8 (U8S8) where ORT's
U8S8 kernels are exact, and become uint8 with zero point 128 (U8U8) where they saturate
(x86-64 without VNNI; see ``_cpu``): w_u8 = w_s8 + 128, the same grid. In that form a
float Conv/Gemm weight that ORT would quantize itself (its WeightBiasQuantization
transformer: per-tensor int8, when the input is dequantized and the output reaches a
QuantizeLinear through Relu/Clip only) is quantized here, per output channel, symmetric
(scale amax/127), as uint8/128.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from converter.graph_edit import replace_repeated, unique_name
from converter.plugins.ort._cpu import u8s8_is_exact

_DEFAULT = ("", "ai.onnx")
_INTEGER_OPS = ("Conv", "MatMul", "Gemm")
"""Ops whose (activation, weight) inputs 0 and 1 ORT's CPU provider fuses into integer kernels."""

WeightForm = Literal["auto", "s8", "u8"]
"""``s8``: int8 weights (U8S8 kernels); ``u8``: uint8 weights, zero point 128 (U8U8); ``auto``: ``s8`` where U8S8 is exact on this CPU."""


@dataclass
class Lowering:
    model: onnx.ModelProto
    lowered: list[str] = field(default_factory=list)
    """Tensors whose Q/DQ pair became uint8 (zero point 0, scale amax/255)."""
    shifted: list[str] = field(default_factory=list)
    """Tensors whose Q/DQ pair became uint8 with zero point 128 (same grid as int8/0)."""
    weights: Literal["s8", "u8"] = "s8"
    """The weight form chosen (``auto`` resolved): ``s8`` keeps int8 weights, ``u8`` stores them as uint8/128."""
    u8_weights: list[str] = field(default_factory=list)
    """Weight initializers now read as uint8/128: int8 ones shifted, float ones quantized per channel."""


def _const(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _non_negative(node: onnx.NodeProto | None, graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> bool:
    if node is None or node.domain not in _DEFAULT:
        return False
    if node.op_type == "Relu":
        return True
    if node.op_type == "Clip" and len(node.input) > 1 and node.input[1]:
        low = _const(graph, inits, node.input[1])
        return low is not None and low.size == 1 and float(low) >= 0.0
    return False


def resolve_weight_form(weights: WeightForm) -> Literal["s8", "u8"]:
    """``weights`` with ``auto`` decided for this CPU: ``s8`` where ORT's U8S8 kernels are exact, else ``u8``."""
    if weights == "auto":
        return "s8" if u8s8_is_exact() else "u8"
    if weights not in ("s8", "u8"):
        raise ValueError(f"weights must be 'auto', 's8' or 'u8', not {weights!r}")
    return weights


def _index(g: onnx.GraphProto) -> tuple[dict[str, onnx.TensorProto], dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """Initializers by name, the producer of every value, the readers of every value."""
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output if o}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    return inits, producer, readers


def lower_for_ort_cpu(model: onnx.ModelProto, weights: WeightForm = "auto") -> Lowering:
    """A copy of ``model`` with its activation Q/DQ pairs in uint8; ``model`` is not changed.

    ``weights`` chooses how the weights read with those activations are stored (see
    :data:`WeightForm`); the choice made is :attr:`Lowering.weights`.
    """
    form = resolve_weight_form(weights)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits, producer, readers = _index(g)
    result = Lowering(out, weights=form)
    retyped: set[str] = set()
    for q in [n for n in g.node if n.op_type == "QuantizeLinear" and n.domain in _DEFAULT and len(n.input) == 3]:
        scale, zp = _const(g, inits, q.input[1]), _const(g, inits, q.input[2])
        if scale is None or zp is None or scale.size != 1 or zp.dtype != np.int8 or int(zp) != 0:
            continue
        dqs = readers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" or list(d.input[1:3]) != list(q.input[1:3]) for d in dqs):
            continue  # only plain pairs sharing the Q's parameters
        base = q.output[0]
        s_name, z_name = f"{base}_u8_scale", f"{base}_u8_zero_point"
        if _non_negative(producer.get(q.input[0]), g, inits):
            new_scale, new_zero = float(scale) * 127.0 / 255.0, 0
            result.lowered.append(q.input[0])
        else:
            new_scale, new_zero = float(scale), 128
            result.shifted.append(q.input[0])
        g.initializer.append(numpy_helper.from_array(np.array(new_scale, dtype=np.float32), s_name))
        g.initializer.append(numpy_helper.from_array(np.array(new_zero, dtype=np.uint8), z_name))
        for node in [q, *dqs]:
            node.input[1], node.input[2] = s_name, z_name
        retyped.add(base)
    if form == "u8":
        result.u8_weights = _weights_to_u8(g)
    if retyped or result.u8_weights:  # the Q outputs are uint8 now: drop their stale int8 annotations and the unread int8 parameters
        read = {x for n in g.node for x in n.input} | {i.name for i in g.input}
        gone = {t.name for t in g.initializer if t.name not in read}
        replace_repeated(g.value_info, [v for v in g.value_info if v.name not in retyped and v.name not in gone])
        replace_repeated(g.initializer, [t for t in g.initializer if t.name not in gone])
    return result


def _uint8_dq(node: onnx.NodeProto | None, graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """``node`` is a DequantizeLinear of a uint8 tensor with one (per-tensor) scale."""
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in _DEFAULT or len(node.input) < 3:
        return False
    scale, zp = _const(graph, inits, node.input[1]), _const(graph, inits, node.input[2])
    return scale is not None and scale.size == 1 and zp is not None and zp.dtype == np.uint8


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


def _weights_to_u8(g: onnx.GraphProto) -> list[str]:
    """Store the weights of Conv/MatMul/Gemm whose activation input is uint8 as uint8/128; the names of those weights.

    An int8 weight read through a DequantizeLinear is shifted (w + 128, zero point + 128,
    same scale): the DequantizeLinear's output does not change. A float Conv/Gemm weight
    that ORT would quantize to int8 itself is quantized per output channel instead.
    """
    inits, producer, readers = _index(g)
    used = set(inits) | {x for n in g.node for x in [*n.input, *n.output, n.name]} | {v.name for v in [*g.input, *g.output, *g.value_info]}
    done: list[str] = []
    shifted: set[str] = set()
    new_nodes: list[onnx.NodeProto] = []
    for node in list(g.node):
        if node.op_type not in _INTEGER_OPS or node.domain not in _DEFAULT or len(node.input) < 2:
            continue
        if not _uint8_dq(producer.get(node.input[0]), g, inits):
            continue
        w_name = node.input[1]
        dq = producer.get(w_name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.domain in _DEFAULT and dq.input[0] in inits:
            w = numpy_helper.to_array(inits[dq.input[0]])
            zp = _const(g, inits, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int8)
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
        elif node.op_type in ("Conv", "Gemm") and w_name in inits and inits[w_name].data_type == onnx.TensorProto.FLOAT and _reaches_q(node, readers):
            w = numpy_helper.to_array(inits[w_name])
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if node.op_type == "Conv" or trans_b else 1
            q, scale = _quantize_u8(w, axis)
            q_name, s_name, z_name, dq_out = (unique_name(f"{w_name}_{part}", used) for part in ("u8", "u8_scale", "u8_zero_point", "dequantized"))
            g.initializer.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name),
                                  numpy_helper.from_array(np.full(scale.shape, 128, np.uint8), z_name)])
            new_nodes.append(onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=unique_name(f"{w_name}_DequantizeLinear", used), axis=axis))
            for reader in readers.get(w_name, []):  # every reader of this float weight: the same grid for all
                if reader.op_type == node.op_type and len(reader.input) > 1 and reader.input[1] == w_name and _uint8_dq(producer.get(reader.input[0]), g, inits) and _reaches_q(reader, readers):
                    reader.input[1] = dq_out
            done.append(w_name)
    if new_nodes:  # their inputs are initializers: first in topological order
        replace_repeated(g.node, [*new_nodes, *g.node])
    return done
