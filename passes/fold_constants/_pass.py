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
from converter.passes.fold_constants._plan import (
    FoldConstantsOptions,
    Plan,
    infer_types,
    make_plan,
    node_label,
)


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
        rejects = rejected_values(model, plan, values, types, limit)
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
        refused = [f"{node_label(model.graph.node[i])}: {why}" for i, why in sorted(plan.refused.items())]
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

