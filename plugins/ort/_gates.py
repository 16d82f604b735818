"""HardSwish between quantized tensors as HardSigmoid + QLinearMul, the form ORT's own quantizer's models run.

After the chain, a HardSwish often reads a uint8 pair (a fused Conv's output) and writes one (the next Conv's
input): ``DQ(x) -> HardSwish -> Q``. ORT runs that as HardSigmoid and Mul in float between a DequantizeLinear and a
QuantizeLinear. With a uint8 pair on the gate, ``HardSigmoid(x)`` in [0, 1] exactly (scale 1/255, zero point 0: 0
and 1 on the grid, steps of 0.4%), the Mul reads two dequantized tensors and writes a quantized one, which ORT
fuses into QLinearMul: the float Mul and its pass over the tensor go. ``x * HardSigmoid(x)`` written as two ops
(after ``_hardswish`` collapsed a written-out one) gets the gate pair the same way, where the Mul's output goes
only to QuantizeLinear.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.graph_edit import replace_repeated, unique_name
from converter.plugins.ort._graph import GraphIndex, attribute, in_default_domain, used_names

GATE_SCALE = np.float32(1.0 / 255.0)


def _uint8_dq(name: str, index: GraphIndex) -> bool:
    dq = index.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or not in_default_domain(dq) or len(dq.input) != 3:
        return False
    zero = index.value(dq.input[2])
    return zero is not None and zero.dtype == np.uint8 and zero.size == 1


def _into_q(name: str, index: GraphIndex) -> bool:
    readers = index.readers.get(name, [])
    return bool(readers) and name not in index.outputs and all(r.op_type == "QuantizeLinear" and in_default_domain(r) for r in readers)


def _gate_pair(gate: str, used: set[str], params: tuple[str, str]) -> tuple[str, list[onnx.NodeProto]]:
    """A uint8 Q/DQ pair on ``gate`` with ``params`` (scale, zero point): the dequantized name and the two nodes."""
    q, dq = unique_name(f"{gate}_u8_quantized", used), unique_name(f"{gate}_u8_dequantized", used)
    return dq, [helper.make_node("QuantizeLinear", [gate, *params], [q], name=unique_name(f"{gate}_u8_QuantizeLinear", used)),
                helper.make_node("DequantizeLinear", [q, *params], [dq], name=unique_name(f"{gate}_u8_DequantizeLinear", used))]


def quantize_gates(g: onnx.GraphProto) -> int:
    """Give each HardSwish (and ``x * HardSigmoid(x)``) from a uint8 pair into QuantizeLinear a uint8 gate (in place);
    how many."""
    index = GraphIndex.of(g)
    used = used_names(g)
    params: tuple[str, str] | None = None
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for node in g.node:
        if not in_default_domain(node) or not node.output:
            continue
        if node.op_type == "HardSwish" and _uint8_dq(node.input[0], index) and _into_q(node.output[0], index):
            x, y = node.input[0], node.output[0]
            gate = unique_name(f"{y}_gate", used)
            sigmoid = helper.make_node("HardSigmoid", [x], [gate], name=gate, alpha=1.0 / 6.0, beta=0.5)
        elif node.op_type == "Mul" and len(node.input) == 2 and _into_q(node.output[0], index):
            found = None
            for x, gate in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
                p = index.producer.get(gate)
                if (p is not None and p.op_type == "HardSigmoid" and in_default_domain(p) and p.input[0] == x and _uint8_dq(x, index)
                        and len(index.readers.get(gate, [])) == 1 and 0 < attribute(p, "alpha", 0.2)):
                    found = (x, gate)
            if found is None:
                continue
            x, gate, y, sigmoid = found[0], found[1], node.output[0], None
        else:
            continue
        if params is None:
            params = (unique_name("hardsigmoid_gate_u8_scale", used), unique_name("hardsigmoid_gate_u8_zero_point", used))
            g.initializer.extend([numpy_helper.from_array(np.array(GATE_SCALE), params[0]), numpy_helper.from_array(np.array(0, np.uint8), params[1])])
        dq, pair = _gate_pair(gate, used, params)
        mul = helper.make_node("Mul", [x, dq], [y], name=unique_name(f"{y}_mul", used))
        replaced[id(node)] = [*([sigmoid] if sigmoid is not None else []), *pair, mul]
    if replaced:
        replace_repeated(g.node, [m for n in g.node for m in replaced.get(id(n), [n])])
    return len(replaced)
