"""What fold_constants folds: the constant subgraph, its boundary, and what it refuses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from converter import lazy_weights
from converter.errors import describe_exception
from converter.graph_edit import node_inputs
from converter.options import bounded
from converter.passes.fold_constants._constants import (
    DEFAULT_DOMAINS,
    MIB,
    QDQ_OPS,
    SHAPE_OPS,
    constant_node_tensor,
    is_constant_node,
    is_default_domain,
)
from converter.passes.fold_constants._shapes import TensorType, log, refine, tensor_nbytes
from converter.passes.fold_constants._symbolic import MAX_ELEMENTS, TRACKED_TYPES, Value, propagate, shape_value, value_of_array


@dataclass(frozen=True)
class FoldConstantsOptions:
    size_limit_mib: float = field(default=64.0, metadata=bounded(1e-6, 1 << 20, "do not materialize a folded tensor larger than this (MiB); such nodes stay and are reported"))
    constant_nodes: bool = field(default=True, metadata={"help": "turn Constant nodes into initializers"})
    fold_shapes: bool = field(default=True, metadata={"help": "fold shape arithmetic wherever the dims it reads are static, also on tensors whose other dims are dynamic (bakes those dims into constants)"})
    simplify: bool = field(default=True, metadata={"help": "exact rewrites around folded values: Reshape shapes from symbolic dims become constants (0/-1), no-op nodes go, duplicate nodes and initializers merge, Reshape/Concat/Unsqueeze chains merge"})
    fuse_conv: bool = field(default=True, metadata={"help": "fold BatchNormalization and per-channel constant Mul/Add after a Conv into its float weights and bias (float rounding changes, about 1e-7 relative)"})
    max_rounds: int = field(default=8, metadata=bounded(1, 100, "fold and rewrite again until nothing changes, at most this many rounds"))

    def __post_init__(self) -> None:
        if not self.size_limit_mib > 0:
            raise ValueError(f"size_limit_mib must be positive, got {self.size_limit_mib}")
        if not 1 <= self.max_rounds <= 100:
            raise ValueError(f"max_rounds must be in [1, 100], got {self.max_rounds}")


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Which nodes fold, which outputs are kept as initializers, and what was refused."""

    fold: list[int] = field(default_factory=list)
    """Indices (in graph order) of nodes to remove."""
    shape_values: dict[str, np.ndarray] = field(default_factory=dict)
    """Outputs computed here from shapes and small integer constants, without running anything."""
    boundary: list[str] = field(default_factory=list)
    """Folded outputs something else still reads: they become initializers."""
    refused: dict[int, str] = field(default_factory=dict)
    """Node index -> why a node with constant inputs does not fold."""
    qdq_kept: int = 0
    values: dict[str, Value] = field(default_factory=dict)
    """Every small integer tensor's value as far as it is known (symbolic dims included)."""


def node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def _why_not_foldable(node: onnx.NodeProto, opset: int) -> str | None:
    """Reason a node must not be evaluated ahead of time, or None when it may.

    Of the nodes with subgraphs only ``If`` is (its branches being deterministic): reading only
    constants, it takes a known branch, as ONNX Runtime's own optimizer would inline it.
    """
    if not is_default_domain(node):
        return f"op domain '{node.domain}' is not evaluated ahead of time"
    subgraphs = [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]
    if subgraphs and node.op_type != "If":
        return "has subgraphs (only If is evaluated ahead of time)"
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return f"no schema for {node.op_type} at opset {opset}"
    if not subgraphs and schema.node_determinism != onnx.defs.OpSchema.NodeDeterminism.Deterministic:
        return "non-deterministic"
    for g in subgraphs:  # an If is as deterministic as its branches
        inner = next((r for n in g.node if (r := _why_not_foldable(n, opset))), None)
        if inner:
            return f"a branch holds a node that is not: {inner}"
    return None


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)


def _constant_sources(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    declared = {i.name for i in g.input}
    names = {t.name for t in g.initializer if t.name not in declared}
    names.update(n.output[0] for n in g.node if is_constant_node(n))
    return names


def _if_condition_producers(graph: onnx.GraphProto, ifs: list[onnx.NodeProto]) -> dict[int, str]:
    """Nodes that compute the condition of one of ``ifs`` (Ifs that stay): they are not folded.

    ONNX Runtime inlines an ``If`` whose condition is an initializer and then infers the branch
    it took with static shapes; some branch bodies are valid only while the branch is opaque
    (AffineGrid's function reads ``Range`` inputs as 1-element tensors), so a folded condition
    can turn a model ONNX Runtime runs into one it refuses.
    """
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    kept: dict[int, str] = {}
    stack = [n.input[0] for n in ifs if is_default_domain(n) and n.input]
    while stack:
        idx = producer.get(stack.pop())
        if idx is None or idx in kept:
            continue
        kept[idx] = "computes the condition of an If (ONNX Runtime would inline the branch)"
        stack.extend(x for x in graph.node[idx].input if x)
    return kept


class _Values:
    """Values of small integer tensors: constants on demand, computed ones as the walk goes."""

    def __init__(self, model: onnx.ModelProto, const: set[str]) -> None:
        g = model.graph
        self.tensors = {t.name: t for t in g.initializer if t.name in const}
        self.tensors.update((n.output[0], n) for n in g.node if is_constant_node(n))
        self.known: dict[str, Value | None] = {}

    def get(self, name: str) -> Value | None:
        if not name:
            return None
        if name not in self.known:
            self.known[name] = self._load(name)
        return self.known[name]

    def _load(self, name: str) -> Value | None:
        src = self.tensors.get(name)
        if isinstance(src, onnx.NodeProto):
            src = constant_node_tensor(src)
        if src is None or src.data_type not in TRACKED_TYPES or int(np.prod(src.dims)) > MAX_ELEMENTS or lazy_weights.unreadable(src):
            return None
        return value_of_array(lazy_weights.to_array(src), src.data_type)


def _consistent(value: Value, t: TensorType | None) -> bool:
    """The computed value agrees with what shape inference says the node produces."""
    if t is None:
        return True
    if t.elem_type and t.elem_type != value.elem_type:
        return False
    if t.sym is not None:
        shape = value.data.shape
        if len(t.sym) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(t.sym, shape, strict=True)):
            return False
    return True


def _symbolic_value(node: onnx.NodeProto, values: _Values, types: dict[str, TensorType]) -> Value | None:
    if not is_default_domain(node) or len(node.output) != 1 or not node.input:
        return None
    try:
        if node.op_type in SHAPE_OPS:
            value = shape_value(node, types.get(node.input[0]))
        else:
            ins = [values.get(x) for x in node.input]
            value = propagate(node, ins) if any(v is not None for v in ins) else None
    except Exception as exc:  # a malformed node (bad attribute, odd values): folded by evaluation or not at all
        log.debug("fold_constants: cannot compute %s symbolically (%s)", node_label(node), describe_exception(exc))
        return None
    return value if value is not None and _consistent(value, types.get(node.output[0])) else None


def make_plan(model: onnx.ModelProto, types: dict[str, TensorType], opts: FoldConstantsOptions, excluded: dict[int, str]) -> Plan:
    """Walk the (topologically ordered) main graph and mark the nodes whose outputs are constant.

    An ``If`` that stays (it reads a dynamic value) keeps what computes its condition: planned
    once to find such Ifs, then again with their condition's producers kept.
    """
    first = _walk(model, types, opts, excluded, protected={})
    folded = set(first.fold)
    staying_ifs = [n for i, n in enumerate(model.graph.node) if n.op_type == "If" and i not in folded]
    protected = _if_condition_producers(model.graph, staying_ifs)
    return _walk(model, types, opts, excluded, protected) if set(protected) & folded else first


def _walk(model: onnx.ModelProto, types: dict[str, TensorType], opts: FoldConstantsOptions, excluded: dict[int, str], protected: dict[int, str]) -> Plan:
    g = model.graph
    opset = opset_of(model)
    limit = opts.size_limit_mib * MIB
    const = _constant_sources(model)
    values = _Values(model, const)
    plan = Plan(refused=dict(excluded))
    outputs = {o.name for o in g.output}
    fresh: set[str] = set()
    """Tensors whose type or value this walk learned: their readers' shapes are inferred again."""
    for idx, node in enumerate(g.node):
        if is_constant_node(node) or idx in excluded or _folded_output(node, outputs, const):
            continue
        if opts.fold_shapes and fresh.intersection(node.input) and _incomplete(node, types) and not has_subgraphs(node):
            data = {x: v.array() for x in node.input if (v := values.get(x)) is not None and v.known}
            fresh.update(refine(node, types, data, list(model.opset_import)))
        value = _symbolic_value(node, values, types) if opts.fold_shapes else None
        if value is not None:
            values.known[node.output[0]] = value
            plan.values[node.output[0]] = value
            if value.known:
                fresh.add(node.output[0])
        if idx in protected:
            continue
        if value is not None and value.known:
            plan.shape_values[node.output[0]] = value.array()
            plan.fold.append(idx)
            const.add(node.output[0])
            continue
        ins = [x for x in node.input if x]
        if not ins or not all(x in const for x in node_inputs(node)):
            continue
        if node.op_type in QDQ_OPS and is_default_domain(node):
            plan.qdq_kept += 1
            continue
        reason = _why_not_foldable(node, opset) or _oversize(node, types, limit)
        if reason:
            plan.refused[idx] = reason
            continue
        plan.fold.append(idx)
        const.update(o for o in node.output if o)
    plan.boundary = _boundary(g, plan.fold)
    return plan


def _incomplete(node: onnx.NodeProto, types: dict[str, TensorType]) -> bool:
    """Some output's shape has a dim that is not static."""
    return any(o and ((t := types.get(o)) is None or t.dims is None) for o in node.output)


def has_subgraphs(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _folded_output(node: onnx.NodeProto, outputs: set[str], const: set[str]) -> bool:
    """The ``Identity`` a previous fold left to keep a constant graph output's name."""
    return node.op_type == "Identity" and node.output[0] in outputs and node.input[0] in const


def _oversize(node: onnx.NodeProto, types: dict[str, TensorType], limit: float) -> str | None:
    for out in node.output:
        t = types.get(out)
        if t is not None and not t.is_tensor:
            return f"output '{out}' is not a tensor"
        size = tensor_nbytes(t) if t is not None else None
        if size is not None and size > limit:
            return f"output '{out}' would be {size / MIB:.1f} MiB > size_limit_mib={limit / MIB:g}"
    return None


def _boundary(graph: onnx.GraphProto, fold: list[int]) -> list[str]:
    """Folded outputs read by a node that stays (subgraph references included) or by the graph's outputs."""
    folded = set(fold)
    produced = {o for i in fold for o in graph.node[i].output if o}
    read = {o.name for o in graph.output} & produced
    for idx, node in enumerate(graph.node):
        if idx not in folded:
            read.update(x for x in node_inputs(node) if x in produced)
    return [o for i in fold for o in graph.node[i].output if o in read]
