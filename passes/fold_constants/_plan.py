"""What fold_constants folds: tensor types, the constant subgraph, its boundary, and what it refuses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from converter.graph_edit import node_inputs
from converter.options import bounded
from converter.passes.fold_constants._constants import (
    DEFAULT_DOMAINS,
    MIB,
    QDQ_OPS,
    SHAPE_OPS,
    is_constant_node,
    is_default_domain,
)


@dataclass(frozen=True)
class FoldConstantsOptions:
    size_limit_mib: float = field(default=64.0, metadata=bounded(1e-6, 1 << 20, "do not materialize a folded tensor larger than this (MiB); such nodes stay and are reported"))
    constant_nodes: bool = field(default=True, metadata={"help": "turn Constant nodes into initializers"})
    fold_shapes: bool = field(default=True, metadata={"help": "fold Shape/Size of tensors whose shape is static (bakes those dims into constants)"})

    def __post_init__(self) -> None:
        if not self.size_limit_mib > 0:
            raise ValueError(f"size_limit_mib must be positive, got {self.size_limit_mib}")




@dataclass
class TensorType:
    elem_type: int
    dims: tuple[int, ...] | None
    """Static dims, or None when any dim is unknown or symbolic."""
    is_tensor: bool = True


def _tensor_type(vi: onnx.ValueInfoProto) -> TensorType:
    if not vi.type.HasField("tensor_type"):
        return TensorType(0, None, is_tensor=vi.type.WhichOneof("value") is None)
    tt = vi.type.tensor_type
    if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
        return TensorType(tt.elem_type, None)
    return TensorType(tt.elem_type, tuple(int(d.dim_value) for d in tt.shape.dim))


def _skeleton(model: onnx.ModelProto, keep_elements: int = 64) -> onnx.ModelProto:
    """The model without big initializer data: large initializers become typed graph inputs.

    Small ones stay so shape inference can propagate shape values through them.
    """
    g = model.graph
    small = [t for t in g.initializer if int(np.prod(t.dims)) <= keep_elements]
    declared = {i.name for i in g.input}
    big_inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer if int(np.prod(t.dims)) > keep_elements and t.name not in declared]
    graph = helper.make_graph(list(g.node), g.name or "g", [*g.input, *big_inputs], list(g.output), small, value_info=list(g.value_info))
    skel = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
    skel.functions.extend(model.functions)
    return skel


def infer_types(model: onnx.ModelProto) -> dict[str, TensorType]:
    """Types and static shapes of every tensor ONNX shape inference can tell (with data propagation)."""
    inferred = onnx.shape_inference.infer_shapes(_skeleton(model), check_type=False, strict_mode=False, data_prop=True)
    g = inferred.graph
    types = {vi.name: _tensor_type(vi) for vi in [*g.value_info, *g.output, *g.input]}
    for t in model.graph.initializer:
        types[t.name] = TensorType(t.data_type, tuple(int(d) for d in t.dims))
    return types


def tensor_nbytes(t: TensorType) -> int | None:
    if t.dims is None or not t.elem_type:
        return None
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize if t.elem_type != onnx.TensorProto.STRING else 8
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Which nodes fold, which outputs are kept as initializers, and what was refused."""

    fold: list[int] = field(default_factory=list)
    """Indices (in graph order) of nodes to remove."""
    shape_values: dict[str, np.ndarray] = field(default_factory=dict)
    """Outputs of Shape/Size nodes computed from static shapes, without running anything."""
    boundary: list[str] = field(default_factory=list)
    """Folded outputs something else still reads: they become initializers."""
    refused: dict[int, str] = field(default_factory=dict)
    """Node index -> why a node with constant inputs does not fold."""
    qdq_kept: int = 0


def node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def _why_not_foldable(node: onnx.NodeProto, opset: int) -> str | None:
    """Reason a node must not be evaluated ahead of time, or None when it may."""
    if not is_default_domain(node):
        return f"op domain '{node.domain}' is not evaluated ahead of time"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return "has subgraphs"
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return f"no schema for {node.op_type} at opset {opset}"
    if schema.node_determinism != onnx.defs.OpSchema.NodeDeterminism.Deterministic:
        return "non-deterministic"
    return None


def _shape_value(node: onnx.NodeProto, t: TensorType | None) -> np.ndarray | None:
    if t is None or t.dims is None:
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(t.dims, dtype=np.int64)), np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(t.dims))
    return np.array(t.dims[start:end], np.int64)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)


def _constant_sources(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    declared = {i.name for i in g.input}
    names = {t.name for t in g.initializer if t.name not in declared}
    names.update(n.output[0] for n in g.node if is_constant_node(n))
    return names


def make_plan(model: onnx.ModelProto, types: dict[str, TensorType], opts: FoldConstantsOptions, excluded: dict[int, str]) -> Plan:
    """Walk the (topologically ordered) main graph and mark the nodes whose inputs are all constant."""
    g = model.graph
    opset = _opset(model)
    limit = opts.size_limit_mib * MIB
    const = _constant_sources(model)
    plan = Plan(refused=dict(excluded))
    for idx, node in enumerate(g.node):
        if is_constant_node(node) or idx in excluded:
            continue
        if opts.fold_shapes and node.op_type in SHAPE_OPS and is_default_domain(node) and node.input[0] not in const:
            value = _shape_value(node, types.get(node.input[0]))
            if value is not None:
                plan.shape_values[node.output[0]] = value
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


# ---------------------------------------------------------------- evaluation
