"""Small, reusable edits on ONNX graphs: uses, renames, topological order."""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import onnx


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds (If branches, Loop/Scan bodies)."""
    out = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def outer_scope_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads but does not define: references to enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for n in graph.node:
        used.update(x for x in n.input if x)
        for sg in subgraphs(n):
            used |= outer_scope_inputs(sg)
        defined.update(o for o in n.output if o)
    used.update(o.name for o in graph.output)
    return used - defined


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Direct inputs plus names the node's subgraphs take from the enclosing scope."""
    names = [x for x in node.input if x]
    for sg in subgraphs(node):
        names.extend(sorted(outer_scope_inputs(sg)))
    return names


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... whichever is free first; the name is added to ``taken``."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def replace_repeated(field: Any, items: Sequence[Any]) -> None:
    """Make a protobuf repeated message field hold exactly ``items`` (copied first: they may live in it)."""
    copies = []
    for item in items:
        c = type(item)()
        c.CopyFrom(item)
        copies.append(c)
    del field[:]
    field.extend(copies)


def final_name(renames: dict[str, str], name: str) -> str:
    """Where ``name`` ends up after ``renames``, following chains (a->b, b->c) and stopping on a cycle."""
    seen = set()
    while name in renames and name not in seen:
        seen.add(name)
        name = renames[name]
    return name


def rename_all_uses(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Apply ``old -> new`` to every node input (subgraphs included), following chains (a->b, b->c)."""

    def final(name: str) -> str:
        return final_name(renames, name)

    for n in graph.node:
        for i, x in enumerate(n.input):
            if x in renames:
                n.input[i] = final(x)
        for sg in subgraphs(n):
            rename_all_uses(sg, renames)


def topological_sort(graph: onnx.GraphProto) -> bool:
    """Order nodes so producers come before consumers, keeping the given order where it is valid.

    Returns True when the order changed. Raises ValueError on a cycle or a missing producer.
    """
    nodes = list(graph.node)
    producer: dict[str, int] = {}
    for idx, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = idx
    deps: list[set[int]] = []
    consumers: dict[int, list[int]] = defaultdict(list)
    for idx, n in enumerate(nodes):
        d = set()
        for name in node_inputs(n):
            if name in producer:  # others: graph inputs, initializers, outer scope (the checker reports missing ones)
                d.add(producer[name])
        deps.append(d)
        for p in d:
            consumers[p].append(idx)
    remaining = [len(d) for d in deps]
    order: list[int] = []
    heap = [i for i, r in enumerate(remaining) if r == 0]  # smallest index first: keeps the given order
    heapq.heapify(heap)
    while heap:
        i = heapq.heappop(heap)
        order.append(i)
        for c in consumers[i]:
            remaining[c] -= 1
            if remaining[c] == 0:
                heapq.heappush(heap, c)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or nodes[i].op_type for i in range(len(nodes)) if remaining[i] > 0][:5]
        raise ValueError(f"the graph has a cycle through nodes {', '.join(stuck)}")
    if order == list(range(len(nodes))):
        return False
    replace_repeated(graph.node, [nodes[i] for i in order])
    return True
