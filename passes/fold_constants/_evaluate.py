"""Evaluating the constant subgraph (ONNX Runtime, else onnx.reference) and applying the results."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.errors import describe_exception
from converter.graph_edit import node_inputs
from converter.ort_session import make_session, run_session, session_options
from converter.pass_api import PassContext
from converter.passes.fold_constants._constants import (
    MIB,
    bump_ir_for_initializers,
    delete_at,
    is_constant_node,
)
from converter.passes.fold_constants._graph import drop_dead
from converter.passes.fold_constants._plan import Plan, opset_of
from converter.passes.fold_constants._shapes import TensorType


def _eval_model(model: onnx.ModelProto, plan: Plan) -> tuple[onnx.ModelProto, list[str]]:
    """A model of the constant subgraph alone: no inputs, the boundary tensors as outputs."""
    g = model.graph
    run_nodes = [g.node[i] for i in plan.fold if g.node[i].output[0] not in plan.shape_values]
    produced = {o for n in run_nodes for o in n.output}
    wanted = [b for b in plan.boundary if b in produced]
    needed = {x for n in run_nodes for x in node_inputs(n)} - produced
    inits = [t for t in g.initializer if t.name in needed]
    consts = [n for n in g.node if is_constant_node(n) and n.output[0] in needed]
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


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {describe_exception(exc)}"


class EvaluationFailed(RuntimeError):
    """Neither ONNX Runtime nor onnx.reference could evaluate the constant subgraph."""


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
        ctx.log.info("ONNX Runtime cannot evaluate the constant subgraph (%s); trying onnx.reference", _error_line(ort_exc))
        try:
            values.update(_run_reference(sub))
        except Exception as ref_exc:
            raise EvaluationFailed(f"ONNX Runtime ({_error_line(ort_exc)}) and onnx.reference ({_error_line(ref_exc)}) cannot evaluate the constant subgraph") from ref_exc
        return values, "onnx.reference"


def rejected_values(model: onnx.ModelProto, plan: Plan, values: dict[str, np.ndarray], types: dict[str, TensorType], limit: float) -> dict[int, str]:
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
        elif _shape_mismatch(value, types.get(name)):
            bad[idx] = f"output '{name}' evaluated to shape {list(value.shape)}, its inferred shape differs"
    return bad


def _shape_mismatch(value: np.ndarray, t: TensorType | None) -> bool:
    """A value whose rank or a static dim differs from what inference says the node produces."""
    if t is None or t.sym is None:
        return False
    return len(t.sym) != value.ndim or any(isinstance(d, int) and d != s for d, s in zip(t.sym, value.shape, strict=True))


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
        bump_ir_for_initializers(model)
    drop_dead(g, consumed, opset_of(model))
    return nbytes
