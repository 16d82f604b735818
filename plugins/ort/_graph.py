"""Small reads and edits of one ONNX graph that the ORT lowering's steps share: constants, producers, readers, pairs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from converter import lazy_weights
from converter.activation_floors import GraphView
from converter.graph_edit import node_inputs, unique_name

DEFAULT_DOMAINS = ("", "ai.onnx")


def in_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


def const_value(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    """The value of an initializer or a ``Constant`` node's output, or None when ``name`` is neither."""
    if name in inits:
        return lazy_weights.to_array(inits[name])
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return lazy_weights.to_array(a.t)
    return None


def attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass
class GraphIndex:
    """Initializers by name, the producer of every value, the readers of every value (in node order).

    A node whose subgraphs (If/Loop/Scan bodies) take a name from this graph reads it too:
    it is one of that name's readers, though not through ``node.input``.
    """

    inits: dict[str, onnx.TensorProto]
    producer: dict[str, onnx.NodeProto]
    readers: dict[str, list[onnx.NodeProto]]
    outputs: set[str]
    """Names of the graph's outputs."""
    constants: dict[str, onnx.TensorProto]
    """The values of ``Constant`` nodes, by output name."""

    @classmethod
    def of(cls, g: onnx.GraphProto) -> GraphIndex:
        readers: dict[str, list[onnx.NodeProto]] = {}
        constants: dict[str, onnx.TensorProto] = {}
        for n in g.node:
            for x in n.input:
                readers.setdefault(x, []).append(n)
            for x in sorted(set(node_inputs(n)) - set(n.input)):  # read by a subgraph only
                readers.setdefault(x, []).append(n)
            value = next((a.t for a in n.attribute if a.name == "value"), None) if n.op_type == "Constant" and n.output else None
            if value is not None:
                constants[n.output[0]] = value
        return cls({t.name: t for t in g.initializer}, {o: n for n in g.node for o in n.output if o}, readers, {o.name for o in g.output}, constants)

    def view(self) -> GraphView:
        """The same producers and constants as :mod:`converter.activation_floors` reads them (no second walk of the graph)."""
        return GraphView(self.producer, {**self.inits, **self.constants})

    def value(self, name: str) -> np.ndarray | None:
        """The value of an initializer or ``Constant`` output (as indexed), or None."""
        tensor = self.inits.get(name) or self.constants.get(name)
        return lazy_weights.to_array(tensor) if tensor is not None else None


def used_names(g: onnx.GraphProto) -> set[str]:
    """Every tensor and node name of the graph: what a new name must not clash with."""
    names = {t.name for t in g.initializer} | {v.name for v in [*g.input, *g.output, *g.value_info]}
    for n in g.node:
        names.update([*n.input, *n.output, n.name])
    return names


def add_scalar(g: onnx.GraphProto, used: set[str], base: str, value: float, dtype: type) -> str:
    """A new scalar initializer named after ``base``; its name."""
    name = unique_name(base, used)
    g.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
    return name


@dataclass
class Pair:
    """An activation QuantizeLinear with per-tensor uint8 parameters and the DequantizeLinear nodes reading it."""

    tensor: str
    q: onnx.NodeProto
    dqs: list[onnx.NodeProto]
    scale: float
    zero_point: int

    @property
    def dq_output(self) -> str:
        return self.dqs[0].output[0]


def pair_of(q: onnx.NodeProto, index: GraphIndex) -> Pair | None:
    """``q`` and the DequantizeLinear nodes reading it as a :class:`Pair`: scalar uint8 parameters they all share, the Q's
    output not a graph output; None otherwise."""
    if q.op_type != "QuantizeLinear" or not in_default_domain(q) or len(q.input) != 3:
        return None
    scale, zp = index.value(q.input[1]), index.value(q.input[2])
    if scale is None or zp is None or scale.size != 1 or zp.size != 1 or zp.dtype != np.uint8:
        return None
    dqs = index.readers.get(q.output[0], [])
    if not dqs or q.output[0] in index.outputs or any(d.op_type != "DequantizeLinear" or list(d.input[1:3]) != list(q.input[1:3]) for d in dqs):
        return None
    return Pair(q.input[0], q, dqs, float(scale.reshape(())), int(zp.reshape(())))


def uint8_pairs(g: onnx.GraphProto, index: GraphIndex) -> dict[str, Pair]:
    """Activation pairs ``t -> Q -> DQ...`` with scalar uint8 parameters shared by the Q and its DQs, by tensor ``t``."""
    pairs: dict[str, Pair] = {}
    for q in g.node:
        pair = pair_of(q, index) if q.op_type == "QuantizeLinear" and q.input and q.input[0] not in pairs else None
        if pair is not None:
            pairs[pair.tensor] = pair
    return pairs
