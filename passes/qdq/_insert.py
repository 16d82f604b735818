"""Rewrite the graph with Q/DQ: one shared pair per activation, one DequantizeLinear per weight.

Activations: ``x -> QuantizeLinear(scale, int8 0) -> DequantizeLinear -> consumers``,
placed right after ``x`` is produced; only the planned consumers read the
dequantized tensor (others, and graph outputs, keep the float one). Weights:
an int8 initializer read by a ``DequantizeLinear`` placed before its first
consumer. Constant nodes and initializers left without a reader are removed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.graph_edit import unique_name
from converter.passes.qdq._placement import NodePlan
from converter.passes.qdq._weights import quantize_weight, read_constant


class Names:
    """Fresh tensor and node names that clash with nothing in the graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used = {t.name for t in graph.initializer} | {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
        for n in graph.node:
            self.used.update(n.output)
            self.used.update(n.input)
            self.used.add(n.name)

    def fresh(self, base: str) -> str:
        return unique_name(base, self.used)


@dataclass
class Inserted:
    activation_scales: dict[str, float] = field(default_factory=dict)
    weights: dict[str, dict[str, object]] = field(default_factory=dict)
    removed_constants: list[str] = field(default_factory=list)


def _activation_pair(graph: onnx.GraphProto, names: Names, tensor: str, scale: float) -> tuple[list[onnx.NodeProto], str]:
    s = names.fresh(f"{tensor}_scale")
    z = names.fresh(f"{tensor}_zero_point")
    q = names.fresh(f"{tensor}_quantized")
    dq = names.fresh(f"{tensor}_dequantized")
    graph.initializer.append(numpy_helper.from_array(np.array(scale, dtype=np.float32), s))
    graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int8), z))
    nodes = [
        helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=names.fresh(f"{tensor}_QuantizeLinear")),
        helper.make_node("DequantizeLinear", [q, s, z], [dq], name=names.fresh(f"{tensor}_DequantizeLinear")),
    ]
    return nodes, dq


def _weight_dq(graph: onnx.GraphProto, names: Names, tensor: str, axis: int | None, model_dir: str | None) -> tuple[onnx.NodeProto, str, dict[str, object]]:
    q, scale = quantize_weight(read_constant(graph, tensor, model_dir), axis, tensor)
    qn = names.fresh(f"{tensor}_int8")
    s = names.fresh(f"{tensor}_scale")
    z = names.fresh(f"{tensor}_zero_point")
    dq = names.fresh(f"{tensor}_dequantized")
    graph.initializer.append(numpy_helper.from_array(q, qn))
    graph.initializer.append(numpy_helper.from_array(scale, s))
    graph.initializer.append(numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), z))
    attrs = {"axis": axis} if axis is not None else {}
    node = helper.make_node("DequantizeLinear", [qn, s, z], [dq], name=names.fresh(f"{tensor}_DequantizeLinear"), **attrs)
    return node, dq, {"axis": axis, "channels": int(scale.size), "int8": qn}


def _readers(graph: onnx.GraphProto) -> dict[str, int]:
    count: dict[str, int] = defaultdict(int)
    for n in graph.node:
        for x in n.input:
            count[x] += 1
    for o in graph.output:
        count[o.name] += 1
    return count


def _remove_unread(graph: onnx.GraphProto, replaced: set[str]) -> list[str]:
    readers = _readers(graph)
    gone = [name for name in replaced if readers.get(name, 0) == 0]
    keep_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in gone)]
    keep_inits = [t for t in graph.initializer if t.name not in gone]
    if len(keep_nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep_nodes)
    if len(keep_inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep_inits)
    return sorted(gone)


def insert_qdq(graph: onnx.GraphProto, plans: list[NodePlan], scales: dict[str, float], model_dir: str | None = None) -> Inserted:
    """Apply ``plans`` (node index -> inputs to quantize) with activation ``scales``; nodes are kept in topological order."""
    names = Names(graph)
    done = Inserted()
    by_index = {p.index: p for p in plans}
    inputs = {vi.name for vi in graph.input}
    act_dq: dict[str, str] = {}
    weight_dq: dict[tuple[str, int | None], str] = {}
    head: list[onnx.NodeProto] = []
    for tensor in scales:
        if tensor in inputs:
            nodes, act_dq[tensor] = _activation_pair(graph, names, tensor, scales[tensor])
            head.extend(nodes)
    new_nodes: list[onnx.NodeProto] = list(head)
    for index, original in enumerate(graph.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        plan = by_index.get(index)
        if plan is not None:
            for pos, tensor, axis in plan.weights:
                key = (tensor, axis)
                if key not in weight_dq:
                    dq_node, weight_dq[key], done.weights[tensor] = _weight_dq(graph, names, tensor, axis, model_dir)
                    new_nodes.append(dq_node)
                node.input[pos] = weight_dq[key]
            for pos, tensor in plan.activations:
                node.input[pos] = act_dq[tensor]
        new_nodes.append(node)
        for out in node.output:
            if out in scales and out not in act_dq:
                nodes, act_dq[out] = _activation_pair(graph, names, out, scales[out])
                new_nodes.extend(nodes)
    del graph.node[:]
    graph.node.extend(new_nodes)
    done.activation_scales = dict(scales)
    done.removed_constants = _remove_unread(graph, {t for t, _ in weight_dq})
    return done
