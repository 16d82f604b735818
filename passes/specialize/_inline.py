"""Inlining the branch an ``If`` takes into the graph that holds it, with every name kept unique in the model.

The branch's nodes replace the ``If`` (at its position: what they read from outer scopes is defined
before it), its initializers move up, and its outputs take the names of the ``If``'s outputs: a branch
output computed by a branch node is renamed; one that is an outer-scope name, a branch initializer or
an output listed twice is joined by an ``Identity``. Every name the branch defines (nested subgraphs
included) that is used anywhere else in the model gets a fresh one, and so do clashing node names.
"""

from __future__ import annotations

from collections import Counter

import onnx

from converter.graph_edit import outer_scope_inputs, subgraphs, unique_name


def branch_of(node: onnx.NodeProto, taken: bool) -> onnx.GraphProto:
    wanted = "then_branch" if taken else "else_branch"
    return next(a.g for a in node.attribute if a.name == wanted)


def _count_names(graph: onnx.GraphProto, names: Counter[str], node_names: Counter[str]) -> None:
    """Every tensor name (defined or read) and node name in ``graph`` and its subgraphs."""
    names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
    names.update(t.name for t in graph.initializer)
    names.update(t.values.name for t in graph.sparse_initializer)
    for node in graph.node:
        names.update(x for x in (*node.input, *node.output) if x)
        if node.name:
            node_names[node.name] += 1
        for sg in subgraphs(node):
            _count_names(sg, names, node_names)


def _defined(graph: onnx.GraphProto) -> list[str]:
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer] + [t.values.name for t in graph.sparse_initializer]
    names += [o for n in graph.node for o in n.output if o]
    return names


def _apply(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename names at this level of ``graph`` (definitions and uses); nested subgraphs are not touched."""
    for v in (*graph.input, *graph.output, *graph.value_info):
        v.name = renames.get(v.name, v.name)
    for t in graph.initializer:
        t.name = renames.get(t.name, t.name)
    for t in graph.sparse_initializer:
        t.values.name = renames.get(t.values.name, t.values.name)
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x in renames:
                n.input[i] = renames[x]
        for i, x in enumerate(n.output):
            if x in renames:
                n.output[i] = renames[x]


def rename_scoped(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Apply ``renames`` to ``graph`` and to what its subgraphs read from it (not where a subgraph defines the name itself)."""
    if not renames:
        return
    _apply(graph, renames)
    for n in graph.node:
        for sg in subgraphs(n):
            own = set(_defined(sg))
            rename_scoped(sg, {k: v for k, v in renames.items() if k not in own})


def _uniquify(graph: onnx.GraphProto, taken: set[str], inherited: dict[str, str]) -> None:
    """Give every name ``graph`` defines that is in ``taken`` a fresh one, in it and its subgraphs (recursively)."""
    renames = dict(inherited)
    for name in _defined(graph):
        if name in taken:
            renames[name] = unique_name(name, taken)
        else:
            taken.add(name)
            renames.pop(name, None)
    _apply(graph, renames)
    for n in graph.node:
        for sg in subgraphs(n):
            _uniquify(sg, taken, renames)


def _uniquify_node_names(graph: onnx.GraphProto, taken: set[str]) -> None:
    for n in graph.node:
        if n.name:
            n.name = unique_name(n.name, taken) if n.name in taken else n.name
            taken.add(n.name)
        for sg in subgraphs(n):
            _uniquify_node_names(sg, taken)


def _taken(model: onnx.ModelProto, node: onnx.NodeProto, branch: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """Tensor and node names used anywhere in the model outside ``node``'s branches, plus what ``branch`` reads from outside."""
    names: Counter[str] = Counter()
    node_names: Counter[str] = Counter()
    _count_names(model.graph, names, node_names)
    inner: Counter[str] = Counter()
    inner_nodes: Counter[str] = Counter()
    for sg in subgraphs(node):
        _count_names(sg, inner, inner_nodes)
    taken = {n for n, c in names.items() if c > inner[n]}
    taken_nodes = {n for n, c in node_names.items() if c > inner_nodes[n]}
    taken |= outer_scope_inputs(branch)
    return taken, taken_nodes


def inline_if(model: onnx.ModelProto, graph: onnx.GraphProto, index: int, taken_branch: bool) -> list[onnx.NodeProto]:
    """Replace the ``If`` at ``graph.node[index]`` (``graph`` is the model's graph or one of its subgraphs) by its branch.

    Returns the nodes now in its place.
    """
    node = graph.node[index]
    branch = onnx.GraphProto()
    branch.CopyFrom(branch_of(node, taken_branch))
    taken, taken_nodes = _taken(model, node, branch)
    _uniquify(branch, taken, {})
    _uniquify_node_names(branch, taken_nodes)
    produced = {o for n in branch.node for o in n.output if o}
    renames: dict[str, str] = {}
    joins: list[onnx.NodeProto] = []
    for out, target in zip([o.name for o in branch.output], node.output, strict=False):
        if not target:
            continue
        if out in produced and out not in renames:
            renames[out] = target
        else:  # an outer-scope name, a branch initializer, or an output listed twice
            name = unique_name(f"{node.name or target}/inlined_output", taken_nodes)
            joins.append(onnx.helper.make_node("Identity", [renames.get(out, out)], [target], name=name))
    rename_scoped(branch, renames)
    nodes = [*branch.node, *joins]
    known = {v.name for v in graph.value_info}
    graph.value_info.extend(v for v in branch.value_info if v.name not in known and v.name not in node.output)
    graph.initializer.extend(branch.initializer)
    graph.sparse_initializer.extend(branch.sparse_initializer)
    kept = [*graph.node[:index], *nodes, *graph.node[index + 1:]]
    copies = []
    for n in kept:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        copies.append(c)
    del graph.node[:]
    graph.node.extend(copies)
    return copies[index:index + len(nodes)]
