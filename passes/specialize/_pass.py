"""specialize: fix graph inputs to values, fold what they decide, inline the branch every decided ``If`` takes."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from converter.graph_edit import subgraphs
from converter.pass_api import Pass, PassContext, PassResult
from converter.passes.cleanup import CleanupOptions, CleanupPass
from converter.passes.fold_constants import FoldConstantsOptions, FoldConstantsPass
from converter.passes.specialize._conditions import Scope, condition_value, known_types
from converter.passes.specialize._inline import inline_if
from converter.passes.specialize._values import SpecializeOptions, fix_inputs, parse_entries

MAX_ROUNDS = 1000
"""Each round inlines at least one If, so this only bounds a model with that many nested Ifs."""


def _count_nodes(graph: onnx.GraphProto) -> int:
    return sum(1 + sum(_count_nodes(sg) for sg in subgraphs(n)) for n in graph.node)


def _ifs(scope: Scope) -> Iterator[tuple[Scope, int, onnx.NodeProto]]:
    """Every default-domain If of the model: its scope, its index there, the node; depth first, enclosing graphs first."""
    for i, n in enumerate(scope.graph.node):
        if n.op_type == "If" and n.domain in ("", "ai.onnx"):
            yield scope, i, n
        for sg in subgraphs(n):
            yield from _ifs(Scope.of(sg, scope))


def _label(node: onnx.NodeProto) -> str:
    return f"If '{node.name or node.output[0]}'"


def _inline_round(model: onnx.ModelProto) -> tuple[list[str], dict[str, str]]:
    """Inline every If whose condition is known, one at a time (then look again: its branch may hold more); (names inlined, why the others stay)."""
    inlined: list[str] = []
    staying: dict[str, str] = {}
    if next(_ifs(Scope.of(model.graph)), None) is None:
        return inlined, staying
    types = known_types(model)
    while True:
        found = None
        for scope, index, node in _ifs(Scope.of(model.graph)):
            value = condition_value(model, node, scope, types)
            if isinstance(value, bool):
                found = (scope, index, node, value)
                break
            staying[_label(node)] = value
        if found is None:
            return inlined, staying
        scope, index, node, value = found
        label = _label(node)
        inline_if(model, scope.graph, index, value)
        inlined.append(f"{label} ({'then' if value else 'else'} branch)")
        staying.clear()


class SpecializePass(Pass[SpecializeOptions]):
    name = "specialize"
    summary = "Fix graph inputs to values (inputs=[sr=16000]), fold what they decide and inline the branch of every If whose condition becomes constant."
    Options = SpecializeOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        opts = self.options
        main_before, nodes_before = len(model.graph.node), _count_nodes(model.graph)
        fixed = fix_inputs(model, parse_entries(opts.inputs))
        inlined: list[str] = []
        staying: dict[str, str] = {}
        folded, fold_changed = 0, False
        for _ in range(MAX_ROUNDS):
            if opts.fold:
                result = FoldConstantsPass(FoldConstantsOptions(fuse_conv=False)).run(model, ctx)
                folded += result.facts["nodes_folded"]
                fold_changed |= result.modified
            done, staying = _inline_round(model)
            inlined += done
            if not done:
                break
        cleanup = CleanupPass(CleanupOptions()).run(model, ctx) if opts.fold and (fixed or inlined) else None
        refused = [f"{label} stays: {why}" for label, why in staying.items()]
        facts = {
            "inputs_fixed": fixed,
            "ifs_inlined": len(inlined),
            "ifs_inlined_names": inlined,
            "ifs_left": len(staying),
            "nodes_folded": folded,
            "dead_nodes_removed": cleanup.facts.get("dead_nodes_removed", 0) if cleanup else 0,
            "nodes_before": nodes_before,
            "nodes_after": _count_nodes(model.graph),
            "main_graph_nodes_before": main_before,
            "main_graph_nodes_after": len(model.graph.node),
        }
        modified = bool(fixed or inlined or fold_changed or (cleanup and cleanup.modified))
        if modified:
            ctx.log.info("specialize: fixed %s, inlined %d If(s), %d left; nodes %d -> %d", ", ".join(fixed) or "no inputs", len(inlined), len(staying), nodes_before, facts["nodes_after"])
        return PassResult(model, modified, facts=facts, refused=refused)
