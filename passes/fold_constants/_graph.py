"""Graph bookkeeping fold_constants' rewrites share: removable nodes, dead code left by a rewrite."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable

import onnx

from converter.graph_edit import node_inputs
from converter.passes.fold_constants._constants import delete_at, is_constant_node, is_default_domain


def is_pure(node: onnx.NodeProto, opset: int) -> bool:
    """A default-domain, deterministic node without subgraphs: removing or merging it changes nothing else."""
    if not is_default_domain(node) or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return False
    return _deterministic(node.op_type, opset)


@functools.lru_cache(maxsize=1024)
def _deterministic(op_type: str, opset: int) -> bool:
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    return schema.node_determinism == onnx.defs.OpSchema.NodeDeterminism.Deterministic


def drop_dead(graph: onnx.GraphProto, candidates: Iterable[str], opset: int) -> int:
    """Remove what became unread among ``candidates`` and, transitively, what only they read.

    Pure nodes whose outputs nobody reads, Constant nodes, initializers that are not graph
    inputs, and value_info of names no longer defined. Returns the number of nodes removed.
    """
    readers = reader_counts(graph)
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    declared = {i.name for i in graph.input}
    dead_nodes: set[int] = set()
    dead_names: set[str] = set()
    stack = [c for c in set(candidates) if not readers[c]]
    while stack:
        name = stack.pop()
        if name in dead_names:
            continue
        dead_names.add(name)
        idx = producer.get(name)
        if idx is None or idx in dead_nodes:
            continue
        node = graph.node[idx]
        if any(o and readers[o] for o in node.output) or not (is_constant_node(node) or is_pure(node, opset)):
            continue
        dead_nodes.add(idx)
        for x in set(node_inputs(node)):
            readers[x] -= 1
            if not readers[x]:
                stack.append(x)
    delete_at(graph.node, dead_nodes)
    delete_at(graph.initializer, [i for i, t in enumerate(graph.initializer) if t.name in dead_names and t.name not in declared])
    defined = {t.name for t in graph.initializer} | declared | {o for n in graph.node for o in n.output}
    delete_at(graph.value_info, [i for i, v in enumerate(graph.value_info) if v.name not in defined])
    return len(dead_nodes)


def constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers that are not graph inputs (those can be overridden at run time)."""
    declared = {i.name for i in graph.input}
    return {t.name: t for t in graph.initializer if t.name not in declared}


def reader_counts(graph: onnx.GraphProto) -> Counter[str]:
    """How many nodes read each name (subgraph references included), graph outputs counting as readers."""
    readers: Counter[str] = Counter(o.name for o in graph.output)
    for node in graph.node:
        readers.update(set(node_inputs(node)))
    return readers


def taken_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    names.update(o for n in graph.node for o in n.output)
    return names
