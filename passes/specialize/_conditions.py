"""Whether an ``If``'s condition is known ahead of time, and its value.

fold_constants keeps what computes the condition of an ``If`` that stays (see its ``_plan``), so the
condition is evaluated here: the nodes it depends on are followed back through the graph holding the
``If`` and its enclosing graphs, down to constants (initializers that are not graph inputs, ``Constant``
nodes) and ``Shape``/``Size`` of tensors whose shape is static; that cone is run with ``onnx.reference``.
A cone that reaches a graph input, a subgraph input, a dynamic shape or a node that cannot be evaluated
ahead of time leaves the ``If`` in place, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from converter import lazy_weights
from converter.errors import describe_exception
from converter.passes.fold_constants import constant_node_tensor, is_default_domain


@dataclass
class Scope:
    """One graph of the model (the main graph or a subgraph) and the scope enclosing it."""

    graph: onnx.GraphProto
    parent: Scope | None = None
    consts: dict[str, onnx.TensorProto] = field(default_factory=dict)
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    inputs: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, graph: onnx.GraphProto, parent: Scope | None = None) -> Scope:
        inputs = {i.name for i in graph.input}
        consts = {t.name: t for t in graph.initializer if t.name not in inputs}
        producers = {o: n for n in graph.node for o in n.output if o}
        return cls(graph, parent, consts, producers, inputs)

    def lookup(self, name: str) -> tuple[str, object]:
        """("const", tensor) | ("node", producer) | ("input", is_main_graph) | ("missing", None)."""
        scope: Scope | None = self
        while scope is not None:
            if name in scope.consts:
                return "const", scope.consts[name]
            if name in scope.producers:
                return "node", scope.producers[name]
            if name in scope.inputs:
                return "input", scope.parent is None
            scope = scope.parent
        return "missing", None


def known_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Types of every named tensor, subgraphs included, after ONNX shape inference (what the model says where it fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 (an invalid or huge model: use the annotations it has)
        inferred = model
    types: dict[str, onnx.TypeProto] = {}
    ambiguous: set[str] = set()

    def note(name: str, tp: onnx.TypeProto) -> None:
        if name in types and types[name] != tp:  # sibling scopes may reuse a name: its type is then not used
            ambiguous.add(name)
        types.setdefault(name, tp)

    stack = [inferred.graph]
    while stack:
        g = stack.pop()
        for v in (*g.input, *g.value_info, *g.output):
            note(v.name, v.type)
        for t in g.initializer:
            note(t.name, onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)))
        for n in g.node:
            stack.extend(a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
            stack.extend(sg for a in n.attribute if a.type == onnx.AttributeProto.GRAPHS for sg in a.graphs)
    for name in ambiguous:
        del types[name]
    return types


def _dims(tp: onnx.TypeProto | None) -> list[int | None] | None:
    """A tensor's dims (None where not static), or None when its rank is not known."""
    if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tp.tensor_type.shape.dim]


def _const_array(name: str, scope: Scope) -> np.ndarray | None:
    kind, found = scope.lookup(name)
    if kind == "const":
        return lazy_weights.to_array(found)
    if kind == "node" and found.op_type == "Constant" and is_default_domain(found) and (t := constant_node_tensor(found)) is not None:
        return lazy_weights.to_array(t)
    return None


def _shape_of(node: onnx.NodeProto, scope: Scope, types: dict[str, onnx.TypeProto]) -> tuple[str, list[int | None] | None] | None:
    """For a ``Shape`` node: the tensor it reads and the dims it returns (None where not static; None when the rank is unknown)."""
    if node.op_type != "Shape" or not is_default_domain(node):
        return None
    src = node.input[0]
    kind, found = scope.lookup(src)
    dims = [int(d) for d in found.dims] if kind == "const" else _dims(types.get(src))
    if dims is None:
        return src, None
    attrs = {a.name: a.i for a in node.attribute}
    return src, dims[attrs.get("start", 0):attrs.get("end", len(dims))]


def _picked(node: onnx.NodeProto, n: int, scope: Scope) -> np.ndarray | None:
    """The positions a ``Gather``/``Slice`` on a shape of ``n`` dims reads, or None when they are not constants (or not supported)."""
    if node.op_type == "Gather":
        idx = _const_array(node.input[1], scope) if len(node.input) > 1 else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if idx is None or axis not in (0, -1) or not np.issubdtype(idx.dtype, np.integer) or np.any((idx < -n) | (idx >= n)):
            return None
        return np.where(idx < 0, idx + n, idx)
    attrs = {a.name: list(a.ints) for a in node.attribute}
    parts = [attrs.get(k) for k in ("starts", "ends", "axes", "steps")] if "starts" in attrs else \
        [(_const_array(x, scope) if x else None) for x in [*node.input[1:5], *[""] * (5 - len(node.input))]]
    starts, ends, axes, steps = parts
    if starts is None or ends is None or len(starts) != 1 or (axes is not None and list(axes) not in ([0], [-1])) or (steps is not None and list(steps) != [1]):
        return None
    return np.arange(n)[int(starts[0]):int(ends[0])]


def _shape_leaf(node: onnx.NodeProto, scope: Scope, types: dict[str, onnx.TypeProto]) -> onnx.TensorProto | str | None:
    """A node that reads only static dims (``Shape``, ``Size``, ``Gather``/``Slice`` of a ``Shape``, the rank): its value.

    A reason when it reads a dim that is not static; None when the node reads no shape.
    """
    out = node.output[0]
    if not is_default_domain(node) or node.op_type not in ("Shape", "Size", "Gather", "Slice") or not node.input:
        return None
    if node.op_type == "Shape":
        src, dims = _shape_of(node, scope, types)
        if dims is None:
            return f"depends on the shape of '{src}', whose rank is not known"
        if any(d is None for d in dims):
            return f"depends on the shape of '{src}', which is not static"
        return numpy_helper.from_array(np.array(dims, np.int64), out)
    kind, producer = scope.lookup(node.input[0])
    shape = _shape_of(producer, scope, types) if kind == "node" else None
    if shape is not None:  # Size, Gather or Slice of a shape
        src, dims = shape
        if dims is None:
            return f"depends on the rank of '{src}', which is not known" if node.op_type == "Size" else None
        if node.op_type == "Size":
            return numpy_helper.from_array(np.array(len(dims), np.int64), out)
        picked = _picked(node, len(dims), scope)
        if picked is None:
            return None
        read = np.asarray(np.array(dims, dtype=object)[picked], dtype=object)
        if any(d is None for d in read.ravel()):
            return f"depends on a dim of '{src}' that is not static"
        return numpy_helper.from_array(read.astype(np.int64), out)
    if node.op_type == "Size":
        dims = [int(d) for d in producer.dims] if kind == "const" else _dims(types.get(node.input[0]))
        if dims is None or any(d is None for d in dims):
            return f"depends on the size of '{node.input[0]}', which is not static"
        return numpy_helper.from_array(np.array(int(np.prod(dims, dtype=np.int64)), np.int64), out)
    return None


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def _not_evaluable(node: onnx.NodeProto, opset: int) -> str | None:
    if not is_default_domain(node):
        return f"is computed by {_label(node)} of domain '{node.domain}'"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return f"is computed by {_label(node)}, which has subgraphs (an If is inlined first when its own condition is known)"
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return f"is computed by {_label(node)}, which has no schema at opset {opset}"
    if schema.node_determinism != onnx.defs.OpSchema.NodeDeterminism.Deterministic:
        return f"is computed by {_label(node)}, which is not deterministic"
    return None


@dataclass
class _Cone:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    leaves: dict[str, onnx.TensorProto] = field(default_factory=dict)


def _collect(name: str, scope: Scope, types: dict[str, onnx.TypeProto], opset: int) -> _Cone | str:
    """The nodes (in dependency order) and constants ``name`` is computed from, or why it is not constant."""
    cone = _Cone()
    done: set[str] = set()
    stack: list[tuple[str, bool]] = [(name, False)]
    while stack:
        current, expanded = stack.pop()
        if current in done:
            continue
        kind, found = scope.lookup(current)
        if kind == "const":
            cone.leaves[current] = found
            done.add(current)
            continue
        if kind == "input":
            return f"depends on {'graph' if found else 'subgraph'} input '{current}'"
        if kind == "missing" or not isinstance(found, onnx.NodeProto):
            return f"reads '{current}', which nothing defines"
        node = found
        if expanded:
            cone.nodes.append(node)
            done.update(o for o in node.output if o)
            continue
        leaf = _shape_leaf(node, scope, types)
        if isinstance(leaf, str):
            return leaf
        if leaf is not None:
            cone.leaves[current] = leaf
            done.add(current)
            continue
        if node.op_type == "Constant" and is_default_domain(node) and (t := constant_node_tensor(node)) is not None:
            cone.leaves[current] = t
            done.add(current)
            continue
        why = _not_evaluable(node, opset)
        if why:
            return why
        stack.append((current, True))
        stack.extend((x, False) for x in node.input if x and x not in done)
    return cone


def condition_value(model: onnx.ModelProto, node: onnx.NodeProto, scope: Scope, types: dict[str, onnx.TypeProto]) -> bool | str:
    """The value of the ``If`` ``node``'s condition (``node`` is in ``scope.graph``), or why it is not known."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    cond = node.input[0]
    cone = _collect(cond, scope, types, opset)
    if isinstance(cone, str):
        return f"its condition '{cond}' {cone}"
    if cond in cone.leaves:
        value = lazy_weights.to_array(cone.leaves[cond])
    else:
        leaves = []
        for name, t in cone.leaves.items():
            c = onnx.TensorProto()
            c.CopyFrom(t)
            c.name = name
            leaves.append(c)
        graph = onnx.helper.make_graph(cone.nodes, "condition", [], [onnx.helper.make_empty_tensor_value_info(cond)], leaves)
        sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
        try:
            value = np.asarray(ReferenceEvaluator(sub).run(None, {})[0])
        except Exception as exc:  # noqa: BLE001 (the reference evaluator's own limits: the If stays, with the reason)
            return f"evaluating its condition '{cond}' failed: {describe_exception(exc, 160)}"
    if value.size != 1:
        return f"its condition '{cond}' has {value.size} elements"
    return bool(value.reshape(-1)[0])
