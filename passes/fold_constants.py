"""fold_constants: evaluate constant subgraphs and store their results as initializers.

A node folds when every input is a constant: an initializer that is not also a
graph input (those can be overridden at run time), the output of a ``Constant``
node, the shape of a tensor whose shape is static (``Shape``/``Size``), or the
output of another folding node. The whole constant subgraph is evaluated in ONE
ONNX Runtime session whose outputs are the boundary tensors (those read by
nodes that stay); ``onnx.reference`` evaluates it where ONNX Runtime cannot.

Never folded: ``QuantizeLinear``/``DequantizeLinear`` (an int8 weight with its
``DequantizeLinear`` is how quantized weights are stored), non-deterministic
ops (``RandomNormal`` ...), nodes with subgraphs (``If``/``Loop``/``Scan``),
ops outside the default domain, and results larger than ``size_limit_mib``.
The interface never changes: a graph output that becomes constant keeps its
name through an ``Identity`` reading the folded initializer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.graph_edit import node_inputs
from converter.ort_session import make_session, run_session, session_options
from converter.pass_api import Pass, PassContext, PassResult

MIB = 1 << 20
DEFAULT_DOMAINS = ("", "ai.onnx")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
SHAPE_OPS = frozenset({"Shape", "Size"})


@dataclass(frozen=True)
class FoldConstantsOptions:
    size_limit_mib: float = field(default=64.0, metadata={"help": "do not materialize a folded tensor larger than this (MiB); such nodes stay and are reported"})
    constant_nodes: bool = field(default=True, metadata={"help": "turn Constant nodes into initializers"})
    fold_shapes: bool = field(default=True, metadata={"help": "fold Shape/Size of tensors whose shape is static (bakes those dims into constants)"})

    def __post_init__(self) -> None:
        if not self.size_limit_mib > 0:
            raise ValueError(f"size_limit_mib must be positive, got {self.size_limit_mib}")


# ---------------------------------------------------------------- Constant nodes


def is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


def constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node holds (named like its output); None for sparse values."""
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        tensor.name = name
        return tensor
    plain = {
        "value_float": lambda a: np.array(a.f, np.float32),
        "value_floats": lambda a: np.array(list(a.floats), np.float32),
        "value_int": lambda a: np.array(a.i, np.int64),
        "value_ints": lambda a: np.array(list(a.ints), np.int64),
        "value_string": lambda a: np.array(a.s.decode("utf-8"), dtype=object),
        "value_strings": lambda a: np.array([s.decode("utf-8") for s in a.strings], dtype=object),
    }
    if attr.name in plain:
        return numpy_helper.from_array(plain[attr.name](attr), name)
    return None  # sparse_value: left as a Constant node


def delete_at(container, indices: Iterable[int]) -> None:
    """Delete items of a repeated protobuf field by index.

    ``container.remove(item)`` searches by comparing messages, which is quadratic on big graphs.
    """
    for i in sorted(set(indices), reverse=True):
        del container[i]


def _is_constant_node(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and is_default_domain(node) and len(node.attribute) == 1


def _bump_ir_for_initializers(model: onnx.ModelProto) -> bool:
    """IR < 4 requires every initializer to be a graph input; IR 4 lifts that. Returns True if bumped."""
    if model.ir_version >= 4:
        return False
    model.ir_version = 4
    return True


def constant_nodes_to_initializers(model: onnx.ModelProto) -> int:
    """Replace main-graph Constant nodes by initializers (not those that are graph outputs)."""
    g = model.graph
    outputs = {o.name for o in g.output}
    converted: dict[int, onnx.TensorProto] = {}
    for idx, node in enumerate(g.node):
        if not _is_constant_node(node) or node.output[0] in outputs:
            continue
        tensor = constant_node_tensor(node)
        if tensor is not None:
            converted[idx] = tensor
    if converted:
        _bump_ir_for_initializers(model)
    g.initializer.extend(converted.values())
    delete_at(g.node, converted)
    return len(converted)


# ---------------------------------------------------------------- shapes


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


def _nbytes(t: TensorType) -> int | None:
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


def _node_label(node: onnx.NodeProto) -> str:
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
    names.update(n.output[0] for n in g.node if _is_constant_node(n))
    return names


def make_plan(model: onnx.ModelProto, types: dict[str, TensorType], opts: FoldConstantsOptions, excluded: dict[int, str]) -> Plan:
    """Walk the (topologically ordered) main graph and mark the nodes whose inputs are all constant."""
    g = model.graph
    opset = _opset(model)
    limit = opts.size_limit_mib * MIB
    const = _constant_sources(model)
    plan = Plan(refused=dict(excluded))
    for idx, node in enumerate(g.node):
        if _is_constant_node(node) or idx in excluded:
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
        size = _nbytes(t) if t is not None else None
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


def _eval_model(model: onnx.ModelProto, plan: Plan) -> tuple[onnx.ModelProto, list[str]]:
    """A model of the constant subgraph alone: no inputs, the boundary tensors as outputs."""
    g = model.graph
    run_nodes = [g.node[i] for i in plan.fold if g.node[i].output[0] not in plan.shape_values]
    produced = {o for n in run_nodes for o in n.output}
    wanted = [b for b in plan.boundary if b in produced]
    needed = {x for n in run_nodes for x in node_inputs(n)} - produced
    inits = [t for t in g.initializer if t.name in needed]
    consts = [n for n in g.node if _is_constant_node(n) and n.output[0] in needed]
    shape_inits = [numpy_helper.from_array(v, k) for k, v in plan.shape_values.items() if k in needed]
    graph = helper.make_graph([*consts, *run_nodes], "fold_constants", [], [onnx.ValueInfoProto(name=w) for w in wanted], [*inits, *shape_inits])
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
    sub.functions.extend(model.functions)
    return sub, wanted


def _run_ort(sub: onnx.ModelProto) -> dict[str, np.ndarray]:
    sess = make_session(sub, options=session_options(opt_level="disable", log_severity=4))  # failures are reported, not logged
    return run_session(sess, {})


def _run_reference(sub: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [o.name for o in sub.graph.output]
    return dict(zip(names, ReferenceEvaluator(sub).run(names, {}), strict=True))


class EvaluationFailed(RuntimeError):
    """Neither ONNX Runtime nor onnx.reference could evaluate the constant subgraph."""


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def evaluate(model: onnx.ModelProto, plan: Plan, ctx: PassContext) -> tuple[dict[str, np.ndarray], str]:
    """Values of every boundary tensor and the evaluator used; raises EvaluationFailed if neither can run it."""
    values = {k: v for k, v in plan.shape_values.items() if k in plan.boundary}
    sub, wanted = _eval_model(model, plan)
    if not wanted:
        return values, "none"
    try:
        values.update(_run_ort(sub))
        return values, "onnxruntime"
    except Exception as ort_exc:  # ORT's many error types; the reason is kept and reported
        ctx.log.info("ONNX Runtime cannot evaluate the constant subgraph (%s); trying onnx.reference", _one_line(ort_exc))
        try:
            values.update(_run_reference(sub))
        except Exception as ref_exc:
            raise EvaluationFailed(f"ONNX Runtime ({_one_line(ort_exc)}) and onnx.reference ({_one_line(ref_exc)}) cannot evaluate the constant subgraph") from ref_exc
        return values, "onnx.reference"


def _rejects(model: onnx.ModelProto, plan: Plan, values: dict[str, np.ndarray], types: dict[str, TensorType], limit: float) -> dict[int, str]:
    """Producers of evaluated values that must not be materialized (too big, not a tensor, wrong type)."""
    producer = {o: i for i in plan.fold for o in model.graph.node[i].output}
    bad: dict[int, str] = {}
    for name in plan.boundary:
        value = values.get(name)
        idx = producer[name]
        if not isinstance(value, np.ndarray):
            bad[idx] = f"output '{name}' is not a tensor"
        elif value.nbytes > limit:
            bad[idx] = f"output '{name}' is {value.nbytes / MIB:.1f} MiB > size_limit_mib={limit / MIB:g}"
        elif _dtype_mismatch(value, types.get(name)):
            bad[idx] = f"output '{name}' evaluated to {value.dtype}, its declared type differs"
    return bad


def _dtype_mismatch(value: np.ndarray, t: TensorType | None) -> bool:
    if t is None or not t.elem_type:
        return False
    if t.elem_type == onnx.TensorProto.STRING:
        return value.dtype.kind not in "OUS"
    try:
        return helper.np_dtype_to_tensor_dtype(value.dtype) != t.elem_type
    except (KeyError, TypeError, ValueError):
        return True


# ---------------------------------------------------------------- applying


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = f"{name}_folded", 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_folded{k}"
    taken.add(candidate)
    return candidate


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    names.update(o for n in graph.node for o in n.output)
    return names


def apply_plan(model: onnx.ModelProto, plan: Plan, values: dict[str, np.ndarray]) -> int:
    """Remove folded nodes, add their boundary values as initializers; returns bytes materialized."""
    g = model.graph
    outputs = {o.name for o in g.output}
    taken = _all_names(g)
    folded_nodes = [g.node[i] for i in plan.fold]
    consumed = {x for n in folded_nodes for x in node_inputs(n)}
    identities, nbytes = [], 0
    for name in plan.boundary:
        value = values[name]
        nbytes += value.nbytes
        if name in outputs:
            stored = _unique(name, taken)
            identities.append(helper.make_node("Identity", [stored], [name], name=f"{name}_folded_identity"))
        else:
            stored = name
        g.initializer.append(numpy_helper.from_array(value, stored))
    delete_at(g.node, plan.fold)
    for i, node in enumerate(identities):
        g.node.insert(i, node)
    if plan.boundary:
        _bump_ir_for_initializers(model)
    _drop_unused(g, consumed)
    return nbytes


def _drop_unused(graph: onnx.GraphProto, candidates: Iterable[str]) -> None:
    """Remove Constant nodes, initializers (not graph inputs) and value_info left unread among ``candidates``."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node_inputs(node))
    declared = {i.name for i in graph.input}
    dead = set(candidates) - used
    delete_at(graph.node, [i for i, n in enumerate(graph.node) if _is_constant_node(n) and n.output[0] in dead])
    delete_at(graph.initializer, [i for i, t in enumerate(graph.initializer) if t.name in dead and t.name not in declared])
    defined = {t.name for t in graph.initializer} | declared | {o for n in graph.node for o in n.output}
    delete_at(graph.value_info, [i for i, v in enumerate(graph.value_info) if v.name not in defined])


# ---------------------------------------------------------------- the pass


def _settle(model: onnx.ModelProto, opts: FoldConstantsOptions, ctx: PassContext) -> tuple[Plan, dict[str, np.ndarray], str]:
    """Plan, evaluate, and re-plan without the producers of values that cannot be kept, until stable."""
    types = infer_types(model)
    excluded: dict[int, str] = {}
    limit = opts.size_limit_mib * MIB
    while True:
        plan = make_plan(model, types, opts, excluded)
        if not plan.fold:
            return plan, {}, "none"
        values, evaluator = evaluate(model, plan, ctx)
        rejects = _rejects(model, plan, values, types, limit)
        if not rejects:
            return plan, values, evaluator
        ctx.log.debug("fold_constants: %d folded values cannot be kept; planning again", len(rejects))
        excluded.update(rejects)


class FoldConstantsPass(Pass[FoldConstantsOptions]):
    name = "fold_constants"
    summary = "Evaluate constant subgraphs (Constant, ConstantOfShape, static Shape chains) into initializers; keeps Q/DQ weights."
    Options = FoldConstantsOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        opts = self.options
        ir_before = model.ir_version
        converted = constant_nodes_to_initializers(model) if opts.constant_nodes else 0
        try:
            plan, values, evaluator = _settle(model, opts, ctx)
        except EvaluationFailed as exc:
            reason = f"constant subgraph left as is: {exc}"
            ctx.log.warning("fold_constants: %s", reason)
            return PassResult(model, converted > 0, facts={"constant_nodes_converted": converted, "nodes_folded": 0}, refused=[reason])
        refused = [f"{_node_label(model.graph.node[i])}: {why}" for i, why in sorted(plan.refused.items())]
        nbytes = apply_plan(model, plan, values) if plan.fold else 0
        if plan.qdq_kept:
            refused.append(f"kept {plan.qdq_kept} QuantizeLinear/DequantizeLinear node(s) on constant inputs: quantized weights stay quantized")
        facts = {
            "constant_nodes_converted": converted,
            "nodes_folded": len(plan.fold),
            "shapes_folded": len(plan.shape_values),
            "initializers_added": len(plan.boundary),
            "bytes_materialized": nbytes,
            "evaluator": evaluator,
            "qdq_kept": plan.qdq_kept,
            "ir_version_bumped": model.ir_version != ir_before,
        }
        if plan.fold or converted:
            ctx.log.info("fold_constants: folded %d nodes into %d initializers (%.2f MiB), converted %d Constant nodes", len(plan.fold), len(plan.boundary), nbytes / MIB, converted)
        return PassResult(model, bool(plan.fold or converted), facts=facts, refused=refused)

