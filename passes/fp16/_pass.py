"""fp16: convert float32 computation to float16, keeping what is unsafe in float32 and saying why.

How a node's precision is chosen (see ``_fp16_policy``): its ONNX schema decides which
inputs/outputs may be float16 (fixed ``tensor(float)`` inputs such as ``Resize``'s
``scales`` stay float32); ops in ``op_block_list`` (defaults with reasons:
``convert passes`` lists them), nodes in ``node_block_list``, control flow
(``If``/``Loop``/``Scan`` with their bodies), custom ops, shape arithmetic derived from
``Shape``/``Size`` and nodes reading values beyond ``max_finite_val`` stay float32.
Where a consumer wants the other precision a ``Cast`` is inserted (once per tensor).

Values: a constant (initializer, ``Constant``, ``ConstantOfShape``) with a finite value
beyond ``max_finite_val`` stays float32 and its consumers run in float32 (1e4 leaves
headroom below fp16's 65504 for the products they feed). Nonzero values smaller than
``min_positive_val`` are clamped to it with their sign, as the common converter does:
flushing them to zero would turn epsilons (``x / (var + eps)``) into divisions by zero;
the count is reported. Infinities and NaN are kept (fp16 has them).

A constant or a ``Cast(to=float)`` becomes float16 only when every consumer wants
float16; with ``keep_io_types`` graph inputs and outputs stay float32, with Casts at
the boundary. The result is topologically sorted and every Cast's ``to`` is the type
its readers get (both are defects of onnxconverter-common this pass does not repeat).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from converter import lazy_weights
from converter.errors import PassRefused, describe_exception
from converter.graph_edit import node_inputs, topological_sort
from converter.graph_info import initializer_bytes
from converter.onnx_calls import infer_shapes
from converter.options import bounded
from converter.pass_api import Pass, PassContext, PassResult
from converter.passes.fp16._policy import (
    DEFAULT_OP_BLOCK_LIST,
    FLOAT,
    FLOAT16,
    NON_TENSOR,
    Flexible,
    NodePlan,
    PlanContext,
    Policy,
    Want,
    has_subgraph,
    label,
    plan_node,
    shape_derived,
)
from converter.passes.fp16._rewrite import Emitter, convert_initializers, max_finite_abs, retype_values


@dataclass(frozen=True)
class Fp16Options:
    keep_io_types: bool = field(default=True, metadata={"help": "graph inputs and outputs stay float32, with Cast nodes at the boundary"})
    op_block_list: tuple[str, ...] = field(default=DEFAULT_OP_BLOCK_LIST, metadata={"help": "op types kept in float32 (replaces the default list: ML-domain, random, Q/DQ, TopK, NonMaxSuppression, RoiAlign, Range, CumSum, sums of squares, DFT/STFT; each default says why)"})
    node_block_list: tuple[str, ...] = field(default=(), metadata={"help": "node names kept in float32"})
    min_positive_val: float = field(default=1e-7, metadata=bounded(0.0, 1.0, "nonzero constants smaller than this are clamped to it (sign kept) instead of flushing to zero in fp16"))
    max_finite_val: float = field(default=1e4, metadata=bounded(1.0, 65504.0, "constants with a finite value beyond this stay float32, and so do their consumers"))

    def __post_init__(self) -> None:
        if not 0 < self.min_positive_val < 1:
            raise ValueError(f"min_positive_val must be in (0, 1), got {self.min_positive_val}")
        if not 1 <= self.max_finite_val <= 65504:
            raise ValueError(f"max_finite_val must be in [1, 65504] (fp16's largest finite value), got {self.max_finite_val}")


def _elem(vi: onnx.ValueInfoProto) -> int:
    kind = vi.type.WhichOneof("value")
    if kind is None:
        return 0
    return vi.type.tensor_type.elem_type if kind == "tensor_type" else NON_TENSOR


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    return infer_shapes(model, check_type=False, strict_mode=False, data_prop=False)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every main-graph value (0: unknown; NON_TENSOR: sequence/optional/map)."""
    try:
        g = _inferred(model).graph
    except Exception as exc:
        raise PassRefused(f"shape inference failed, so tensor types are unknown: {describe_exception(exc)}; run infer_shapes to see why") from exc
    types = {vi.name: _elem(vi) for vi in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _constant_max_abs(graph: onnx.GraphProto) -> dict[str, float]:
    """Largest finite |value| of every float32 constant: initializers (not graph inputs), Constant and ConstantOfShape values."""
    inputs = {i.name for i in graph.input}
    out = {t.name: max_finite_abs(lazy_weights.to_array(t)) for t in graph.initializer if t.data_type == FLOAT and t.name not in inputs}
    for node in graph.node:
        if node.op_type not in ("Constant", "ConstantOfShape") or node.domain not in ("", "ai.onnx"):
            continue
        attr = next((a for a in node.attribute if a.name in ("value", "value_float", "value_floats")), None)
        if attr is not None and attr.name == "value" and attr.t.data_type == FLOAT:
            out[node.output[0]] = max_finite_abs(lazy_weights.to_array(attr.t))
        elif attr is not None and attr.name != "value":
            out[node.output[0]] = max_finite_abs(np.array(attr.f if attr.name == "value_float" else list(attr.floats), np.float32))
    return out


def _wants(graph: onnx.GraphProto, plans: list[NodePlan | None], types: dict[str, int], keep_io_types: bool) -> dict[str, set[Want]]:
    """What every reader of each float32 tensor wants: node inputs, subgraph outer references, graph outputs."""
    wants: dict[str, set[Want]] = defaultdict(set)
    for node, plan in zip(graph.node, plans):
        if plan is None:
            continue
        for i, want in plan.input_want.items():
            wants[node.input[i]].add(want)
        if has_subgraph(node):
            for t in set(node_inputs(node)) - set(node.input):
                if types.get(t) == FLOAT:
                    wants[t].add(Want.FP32)
    for vi in graph.output:
        wants[vi.name].add(Want.FP32 if keep_io_types else Want.FP16)
    return wants


def _homes(graph: onnx.GraphProto, plans: list[NodePlan | None], types: dict[str, int], constants: set[str], keep_io_types: bool) -> dict[str, int]:
    """The precision each float32 tensor is produced in."""
    wants = _wants(graph, plans, types, keep_io_types)

    def settle(t: str) -> int:  # a constant or Cast: float16 only when every reader wants float16
        return FLOAT16 if Want.FP16 in wants[t] and Want.FP32 not in wants[t] else FLOAT

    initializers = {t.name for t in graph.initializer}
    homes = {vi.name: FLOAT if keep_io_types or vi.name in initializers else FLOAT16 for vi in graph.input if types.get(vi.name) == FLOAT}
    homes.update({t: settle(t) for t in initializers & constants})
    for node, plan in zip(graph.node, plans):
        for i, elem in (plan.output_home.items() if plan else ()):
            homes[node.output[i]] = settle(node.output[i]) if plan.flexible else elem
    return homes


def _report(graph: onnx.GraphProto, plans: list[NodePlan | None], homes: dict[str, int], out_of_range: dict[str, float],
            emitter: Emitter, init16: list[str], clamped: int, max_finite_val: float) -> tuple[dict[str, Any], list[str]]:
    converted = kept = retargeted = constants = 0
    kept_ops: Counter[str] = Counter()
    refused = []
    for node, plan in zip(graph.node, plans):
        if plan is None:
            continue
        if plan.flexible is not None:
            half = homes.get(node.output[0]) == FLOAT16
            converted += half
            retargeted += half and plan.flexible is Flexible.CAST
            constants += half and plan.flexible is not Flexible.CAST
        elif plan.converted:
            converted += 1
        elif plan.reason is not None:
            kept += 1
            kept_ops[node.op_type] += 1
            refused.append(f"node '{label(node)}' ({node.op_type}) kept in float32: {plan.reason}")
    initializers = {t.name for t in graph.initializer}
    for name, m in out_of_range.items():
        if name in initializers:
            refused.append(f"initializer '{name}' kept in float32: its values reach {m:.3g}, beyond max_finite_val={max_finite_val:g}")
    facts = {
        "nodes_converted": converted,
        "nodes_kept_float32": kept,
        "kept_float32_ops": dict(kept_ops),
        "casts_inserted": emitter.casts_inserted,
        "casts_retargeted": retargeted,
        "constants_converted": constants,
        "initializers_converted": len(init16),
        "initializers_kept_float32": sum(1 for t in graph.initializer if t.data_type == FLOAT and homes.get(t.name, FLOAT) == FLOAT),
        "values_clamped": clamped,
    }
    return facts, refused


MIN_OPSET = 6


class Fp16Pass(Pass[Fp16Options]):
    name = "fp16"
    summary = "Convert float32 computation to float16 (blocklist, out-of-range constants and shape arithmetic kept float32)."
    Options = Fp16Options
    output_precision = "fp16"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        g, o = model.graph, self.options
        opset = next((x.version for x in model.opset_import if x.domain in ("", "ai.onnx")), 0)
        if opset < MIN_OPSET:
            raise PassRefused(f"fp16 needs opset >= {MIN_OPSET} (Cast's 'to' was a string before), the model has opset {opset}; convert it first: -p opset{{target=13}},fp16")
        try:
            reordered = topological_sort(g)
        except ValueError as exc:
            raise PassRefused(str(exc)) from exc
        bytes_before = initializer_bytes(model)
        types = tensor_types(model)
        ranges = _constant_max_abs(g)
        out_of_range = {n: m for n, m in ranges.items() if m > o.max_finite_val}
        plans = self._plan(model, types, out_of_range)
        homes = _homes(g, plans, types, set(ranges), o.keep_io_types)
        emitter, init16, clamped, io_retyped = self._rewrite(g, plans, homes)
        facts, refused = _report(g, plans, homes, out_of_range, emitter, init16, clamped, o.max_finite_val)
        del g.node[:]
        g.node.extend(emitter.nodes)
        facts.update(graph_io_retyped=io_retyped, reordered=int(reordered),
                     initializer_bytes_before=bytes_before, initializer_bytes_after=initializer_bytes(model))
        modified = bool(facts["nodes_converted"] or facts["casts_inserted"] or init16 or io_retyped or reordered)
        ctx.log.info("fp16: %d nodes converted, %d kept float32, %d casts inserted, %d initializers converted",
                     facts["nodes_converted"], facts["nodes_kept_float32"], facts["casts_inserted"], len(init16))
        return PassResult(model, modified, facts=facts, refused=refused)

    def _plan(self, model: onnx.ModelProto, types: dict[str, int], out_of_range: dict[str, float]) -> list[NodePlan | None]:
        g = model.graph
        policy = Policy(frozenset(self.options.op_block_list), frozenset(self.options.node_block_list))
        opsets = {op.domain: int(op.version) for op in model.opset_import}
        constants = {t.name for t in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
        pctx = PlanContext(types, opsets, policy, out_of_range, shape_derived(g, constants))
        return [plan_node(n, pctx) for n in g.node]

    def _rewrite(self, g: onnx.GraphProto, plans: list[NodePlan | None], homes: dict[str, int]) -> tuple[Emitter, list[str], int, int]:
        """Emit the new nodes (kept aside in the emitter), convert initializers, retype values and the interface."""
        o = self.options
        emitter = Emitter(g, homes, o.min_positive_val)
        for name in homes.keys() - {out for n in g.node for out in n.output}:
            emitter.source(name)
        float32_outputs = {v.name for v in g.output} if o.keep_io_types else set()
        for node, plan in zip(g.node, plans):
            emitter.emit(node, plan, float32_outputs)
        init16 = [t.name for t in g.initializer if homes.get(t.name) == FLOAT16]
        clamped = convert_initializers(g, init16, o.min_positive_val) + emitter.values_clamped
        io_before = [vi.type.tensor_type.elem_type for vi in [*g.input, *g.output]]
        retype_values(g, homes, emitter.renamed, o.keep_io_types)
        io_retyped = sum(a != vi.type.tensor_type.elem_type for a, vi in zip(io_before, [*g.input, *g.output]))
        return emitter, init16, clamped, io_retyped
