"""Rewrite the graph with Q/DQ: one shared pair per activation, one DequantizeLinear per weight.

Activations: ``x -> QuantizeLinear(scale, int8 0) -> DequantizeLinear -> consumers``,
placed right after ``x`` is produced; only the planned consumers read the
dequantized tensor (others, and graph outputs, keep the float one). Weights:
an int8 initializer read by a ``DequantizeLinear`` placed before its first
consumer. Constant nodes and initializers left without a reader are removed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.calibration.expose import all_names
from converter.graph_edit import replace_repeated, unique_name
from converter.graph_info import iter_graphs
from converter.passes.qdq._placement import NodePlan
from converter.passes.qdq._weights import quantize_weight

WeightReader = Callable[[str], np.ndarray]
"""Name of a constant (in any graph of the model) -> its value."""


class Names:
    """Fresh tensor and node names that clash with nothing in the model (subgraphs included: names are model-wide)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.used = all_names(model)

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


def _weight_dq(graph: onnx.GraphProto, names: Names, tensor: str, axis: int | None, value: np.ndarray) -> tuple[onnx.NodeProto, str, dict[str, object]]:
    q, scale = quantize_weight(value, axis, tensor)
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


def _readers(model: onnx.ModelProto) -> dict[str, int]:
    """How often each name is read, in any graph (a subgraph may read a constant of an enclosing one)."""
    count: dict[str, int] = defaultdict(int)
    for g in iter_graphs(model.graph):
        for n in g.node:
            for x in n.input:
                count[x] += 1
        for o in g.output:
            count[o.name] += 1
    return count


def remove_unread(model: onnx.ModelProto, replaced: set[str]) -> list[str]:
    """Drop the float weights (initializers, Constant nodes) nothing reads any more, in whichever graph holds them."""
    readers = _readers(model)
    gone = {name for name in replaced if readers.get(name, 0) == 0}
    for graph in iter_graphs(model.graph):
        keep_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in gone)]
        keep_inits = [t for t in graph.initializer if t.name not in gone]
        if len(keep_nodes) != len(graph.node):
            replace_repeated(graph.node, keep_nodes)
        if len(keep_inits) != len(graph.initializer):
            replace_repeated(graph.initializer, keep_inits)
    return sorted(gone)


def insert_qdq(graph: onnx.GraphProto, plans: list[NodePlan], scales: dict[str, float], names: Names, weight_value: WeightReader, done: Inserted) -> set[str]:
    """Apply ``plans`` (node index in ``graph`` -> inputs to quantize) with activation ``scales``; nodes stay in topological order.

    An activation this graph does not produce (a graph input, or a tensor of an enclosing graph read by a
    subgraph) gets its pair at the head of the graph. Returns the float weights now read through
    DequantizeLinear (to drop when nothing else reads them: :func:`remove_unread`).
    """
    by_index = {p.index: p for p in plans}
    used = {t for p in plans for _, t in p.activations}
    produced = {o for n in graph.node for o in n.output}
    act_dq: dict[str, str] = {}
    weight_dq: dict[tuple[str, int | None], str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for tensor in sorted(used - produced):
        nodes, act_dq[tensor] = _activation_pair(graph, names, tensor, scales[tensor])
        new_nodes.extend(nodes)
    for index, original in enumerate(graph.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        plan = by_index.get(index)
        if plan is not None:
            for pos, tensor, axis in plan.weights:
                key = (tensor, axis)
                if key not in weight_dq:
                    dq_node, weight_dq[key], done.weights[tensor] = _weight_dq(graph, names, tensor, axis, weight_value(tensor))
                    new_nodes.append(dq_node)
                node.input[pos] = weight_dq[key]
            for pos, tensor in plan.activations:
                node.input[pos] = act_dq[tensor]
        new_nodes.append(node)
        for out in node.output:
            if out in used and out not in act_dq:
                nodes, act_dq[out] = _activation_pair(graph, names, out, scales[out])
                new_nodes.extend(nodes)
    replace_repeated(graph.node, new_nodes)
    done.activation_scales.update({t: scales[t] for t in used})
    return {t for t, _ in weight_dq}
