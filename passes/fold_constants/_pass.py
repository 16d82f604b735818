"""fold_constants: evaluate constant subgraphs and store their results as initializers.

A node folds when its output is known ahead of time: every input is a constant
(an initializer that is not also a graph input, which can be overridden at run
time; the output of a ``Constant`` node; the output of another folding node), or
it computes from shapes only elements that are static. ``Shape`` of a tensor
whose batch is dynamic but whose other dims are static is a partially known
value; ``Gather``/``Slice``/``Squeeze``/``Unsqueeze``/``Concat``/``Cast`` and
integer arithmetic on it fold wherever the elements they read are static (see
``_symbolic``). The constant subgraph is evaluated in ONE ONNX Runtime session
whose outputs are the boundary tensors (those read by nodes that stay);
``onnx.reference`` evaluates it where ONNX Runtime cannot. Every folded value
keeps the exact dtype and shape its node produced.

Then exact rewrites (``simplify``, see ``_rules``) and Conv weight folding
(``fuse_conv``, see ``_fuse``) run, and the whole repeats (shape inference sees
the folded constants) until nothing changes or ``max_rounds``.

Never folded: ``QuantizeLinear``/``DequantizeLinear`` (an int8 weight with its
``DequantizeLinear`` is how quantized weights are stored), non-deterministic
ops (``RandomNormal`` ...), ``Loop``/``Scan`` (an ``If`` reading only constants
folds into the branch it takes), what computes the condition of an ``If`` that
stays, ops outside the default domain, and results larger than ``size_limit_mib``.
The interface never changes: a graph output that becomes constant keeps its name
through an ``Identity`` reading the folded initializer. Shape inference rounds
(with data propagation, then node by node again where a folded value adds static
dims) tell the dims; where inference fails, less folds.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from converter.pass_api import Pass, PassContext, PassResult
from converter.passes.fold_constants._constants import (
    MIB,
    constant_nodes_to_initializers,
)
from converter.passes.fold_constants._evaluate import (
    EvaluationFailed,
    apply_plan,
    evaluate,
    rejected_values,
)
from converter.passes.fold_constants._fuse import fuse_conv, fuse_pad_into_conv
from converter.passes.fold_constants._plan import (
    FoldConstantsOptions,
    Plan,
    make_plan,
    node_label,
    opset_of,
)
from converter.passes.fold_constants._rules import simplify_graph
from converter.passes.fold_constants._shapes import TensorType, infer_types


def _settle(model: onnx.ModelProto, types: dict[str, TensorType], opts: FoldConstantsOptions, ctx: PassContext) -> tuple[Plan, dict[str, np.ndarray], str]:
    """Plan, evaluate, and re-plan without the producers of values that cannot be kept, until stable."""
    excluded: dict[int, str] = {}
    limit = opts.size_limit_mib * MIB
    while True:
        plan = make_plan(model, types, opts, excluded)
        if not plan.fold:
            return plan, {}, "none"
        values, evaluator = evaluate(model, plan, ctx)
        rejects = rejected_values(model, plan, values, types, limit)
        if not rejects:
            return plan, values, evaluator
        ctx.log.debug("fold_constants: %d folded values cannot be kept; planning again", len(rejects))
        excluded.update(rejects)


class _Totals:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.rewrites: Counter[str] = Counter()
        self.evaluators: list[str] = []
        self.refused: dict[str, str] = {}
        self.qdq_kept = 0

    def add_plan(self, model: onnx.ModelProto, plan: Plan, evaluator: str, nbytes: int) -> None:
        self.counts.update(nodes_folded=len(plan.fold), shapes_folded=len(plan.shape_values), initializers_added=len(plan.boundary), bytes_materialized=nbytes)
        if evaluator != "none" and evaluator not in self.evaluators:
            self.evaluators.append(evaluator)
        self.qdq_kept = max(self.qdq_kept, plan.qdq_kept)


def _round(model: onnx.ModelProto, opts: FoldConstantsOptions, ctx: PassContext, totals: _Totals) -> bool:
    """One round of folding and rewriting; True when it changed the model."""
    types = infer_types(model)
    plan, values, evaluator = _settle(model, types, opts, ctx)
    for i, why in sorted(plan.refused.items()):
        totals.refused[node_label(model.graph.node[i])] = why
    nbytes = apply_plan(model, plan, values) if plan.fold else 0
    totals.add_plan(model, plan, evaluator, nbytes)
    opset = opset_of(model)
    rewrites: Counter[str] = Counter()
    if opts.simplify:
        rewrites += simplify_graph(model, types, plan.values, opset, bake_shapes=opts.fold_shapes, settled=not plan.fold)
    if opts.fuse_conv:
        rewrites["conv_fused"] += fuse_conv(model.graph, opset)
        rewrites["pad_into_conv"] += fuse_pad_into_conv(model.graph, opset)
    totals.rewrites += rewrites
    return bool(plan.fold) or sum(rewrites.values()) > 0


class FoldConstantsPass(Pass[FoldConstantsOptions]):
    name = "fold_constants"
    summary = "Evaluate constant subgraphs (Constant, ConstantOfShape, shape arithmetic on static dims, also of dynamic shapes) into initializers; simplify shape arithmetic on symbolic dims; keeps Q/DQ weights."
    Options = FoldConstantsOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        opts = self.options
        ir_before = model.ir_version
        converted = constant_nodes_to_initializers(model) if opts.constant_nodes else 0
        totals = _Totals()
        refused: list[str] = []
        rounds = 0
        for rounds in range(1, opts.max_rounds + 1):  # noqa: B007 (reported below)
            try:
                changed = _round(model, opts, ctx, totals)
            except EvaluationFailed as exc:
                reason = f"constant subgraph left as is: {exc}"
                ctx.log.warning("fold_constants: %s", reason)
                refused.append(reason)
                break
            if not changed:
                break
        refused[:0] = [f"{label}: {why}" for label, why in totals.refused.items()]
        if totals.qdq_kept:
            refused.append(f"kept {totals.qdq_kept} QuantizeLinear/DequantizeLinear node(s) on constant inputs: quantized weights stay quantized")
        c = totals.counts
        facts = {
            "constant_nodes_converted": converted,
            "nodes_folded": c["nodes_folded"],
            "shapes_folded": c["shapes_folded"],
            "initializers_added": c["initializers_added"],
            "bytes_materialized": c["bytes_materialized"],
            "evaluator": ",".join(totals.evaluators) or "none",
            "qdq_kept": totals.qdq_kept,
            "rewrites": dict(sorted((+totals.rewrites).items())),
            "rounds": rounds,
            "ir_version_bumped": model.ir_version != ir_before,
        }
        modified = bool(c["nodes_folded"] or converted or sum(totals.rewrites.values()))
        if modified:
            ctx.log.info("fold_constants: folded %d nodes into %d initializers (%.2f MiB), converted %d Constant nodes, rewrites %s", c["nodes_folded"], c["initializers_added"], c["bytes_materialized"] / MIB, converted, facts["rewrites"])
        return PassResult(model, modified, facts=facts, refused=refused)
