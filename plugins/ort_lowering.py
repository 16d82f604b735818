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
s8 weight form ORT's CPU kernels are fastest with. Weights stay int8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from converter.graph_edit import replace_repeated

_DEFAULT = ("", "ai.onnx")


@dataclass
class Lowering:
    model: onnx.ModelProto
    lowered: list[str] = field(default_factory=list)
    """Tensors whose Q/DQ pair became uint8 (zero point 0, scale amax/255)."""
    shifted: list[str] = field(default_factory=list)
    """Tensors whose Q/DQ pair became uint8 with zero point 128 (same grid as int8/0)."""


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


def lower_for_ort_cpu(model: onnx.ModelProto) -> Lowering:
    """A copy of ``model`` with its activation Q/DQ pairs in uint8; ``model`` is not changed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output if o}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    result = Lowering(out)
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
    if retyped:  # the Q outputs are uint8 now: drop their stale int8 annotations and the unread int8 parameters
        replace_repeated(g.value_info, [v for v in g.value_info if v.name not in retyped])
        read = {x for n in g.node for x in n.input}
        replace_repeated(g.initializer, [t for t in g.initializer if t.name in read or t.name in {i.name for i in g.input}])
    return result
