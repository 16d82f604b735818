"""Make tensors inside If/Loop/Scan bodies observable: ONNX Runtime only returns main-graph outputs.

A tensor defined in a subgraph is carried out level by level on a copy of the model:

- ``If`` branch: the tensor becomes an extra output of its branch; every other branch
  outputs an empty tensor of the same type and rank (``[0, 1, ...]``: nothing to count),
  and the ``If`` gets the matching extra output;
- ``Loop`` / ``Scan`` body: the tensor becomes an extra scan output, so the node's extra
  output stacks its value of every iteration (a value whose shape changes between
  iterations cannot be stacked: ONNX Runtime then fails, and the collector says so);

until it reaches the main graph, where it becomes a graph output. Statistics over the
carried values equal statistics over the tensor's values in every run of its body; a
branch not taken contributes nothing (``count`` stays 0 when it never runs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.graph_edit import unique_name


@dataclass(frozen=True)
class _Level:
    """One step from a subgraph to the graph holding the node that owns it."""

    owner: onnx.GraphProto
    node: onnx.NodeProto
    attr: str


@dataclass
class Exposed:
    model: onnx.ModelProto
    outputs: dict[str, str] = field(default_factory=dict)
    """Tensor name -> the main-graph output that carries its values (the name itself for main-graph tensors)."""


def _subgraph_attrs(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    out = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append((attr.name, attr.g))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend((attr.name, g) for g in attr.graphs)
    return out


def _definitions(graph: onnx.GraphProto, chain: tuple[_Level, ...], out: dict[str, tuple[onnx.GraphProto, tuple[_Level, ...]]]) -> None:
    """Tensor name -> (the graph defining it, the levels from the main graph down to it)."""
    for name in [*(i.name for i in graph.input), *(t.name for t in graph.initializer)]:
        out.setdefault(name, (graph, chain))
    for node in graph.node:
        for o in node.output:
            if o:
                out.setdefault(o, (graph, chain))
        for attr, sub in _subgraph_attrs(node):
            _definitions(sub, (*chain, _Level(graph, node, attr)), out)


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor and node name of the model, subgraphs included (fresh names must avoid them all)."""
    names: set[str] = set()

    def visit(g: onnx.GraphProto) -> None:
        names.update(i.name for i in [*g.input, *g.output, *g.value_info])
        names.update(t.name for t in g.initializer)
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
            names.add(n.name)
            for _, sub in _subgraph_attrs(n):
                visit(sub)

    visit(model.graph)
    names.discard("")
    return names


def subgraph_tensors(model: onnx.ModelProto, tensors: Iterable[str]) -> list[str]:
    """Those of ``tensors`` that a subgraph defines (the rest are main-graph tensors)."""
    defs: dict[str, tuple[onnx.GraphProto, tuple[_Level, ...]]] = {}
    _definitions(model.graph, (), defs)
    return [t for t in tensors if t in defs and defs[t][1]]


def _empty(elem: int, rank: int, name: str) -> onnx.NodeProto:
    shape = (0,) + (1,) * max(rank - 1, 0)
    value = np.zeros(shape, dtype=helper.tensor_dtype_to_np_dtype(elem))
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(value, name))


def _carry_up(level: _Level, inner: str, elem: int, rank: int, names: set[str]) -> str:
    """Add ``inner`` (a tensor of the body ``level.attr``) as an output of ``level.node``; the new output's name."""
    node, carried = level.node, unique_name(f"{inner}__calib", names)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            if attr.name == level.attr:
                g.output.append(helper.make_tensor_value_info(inner, elem, None))
            elif node.op_type == "If":
                filler = unique_name(f"{inner}__not_taken", names)
                g.node.append(_empty(elem, rank, filler))
                g.output.append(helper.make_tensor_value_info(filler, elem, None))
    if node.op_type == "Scan":
        for attr in node.attribute:
            if attr.name in ("scan_output_axes", "scan_output_directions"):
                attr.ints.append(0)
    node.output.append(carried)
    return carried


def expose(model: onnx.ModelProto, tensors: Iterable[str], infos: dict[str, onnx.ValueInfoProto] | None = None) -> Exposed:
    """A copy of ``model`` in which every one of ``tensors`` defined in a subgraph reaches a main-graph output."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    infos = infos or {}
    defs: dict[str, tuple[onnx.GraphProto, tuple[_Level, ...]]] = {}
    _definitions(copy.graph, (), defs)
    names = all_names(copy)
    result = Exposed(copy)
    for t in tensors:
        if t not in defs or not defs[t][1]:
            result.outputs[t] = t
            continue
        tt = infos[t].type.tensor_type if t in infos else None
        elem = tt.elem_type if tt is not None and tt.elem_type else onnx.TensorProto.FLOAT
        rank = len(tt.shape.dim) if tt is not None and tt.HasField("shape") else 1
        name = t
        for level in reversed(defs[t][1]):
            name = _carry_up(level, name, elem, rank, names)
            if level.node.op_type != "If":
                rank += 1  # a scan output stacks the iterations
        copy.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        result.outputs[t] = name
    return result
