"""cleanup: remove Identity nodes, dead nodes, unused initializers and stale value_info; sort topologically.

Never changes the model's interface: graph inputs and outputs keep their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from converter.graph_edit import node_inputs, rename_all_uses, replace_repeated, topological_sort
from converter.pass_api import Pass, PassContext, PassResult


@dataclass(frozen=True)
class CleanupOptions:
    identity: bool = field(default=True, metadata={"help": "remove Identity nodes (rewiring their readers)"})
    dead_nodes: bool = field(default=True, metadata={"help": "remove nodes no graph output depends on"})
    initializers: bool = field(default=True, metadata={"help": "remove initializers nothing reads (not those listed as graph inputs)"})
    sort: bool = field(default=True, metadata={"help": "put nodes in topological order"})


def _remove_identities(graph: onnx.GraphProto) -> tuple[int, list[str]]:
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    producer = {o: n for n in graph.node for o in n.output if o}
    removed, kept = 0, []
    drop: set[int] = set()
    renames: dict[str, str] = {}
    for idx, node in enumerate(graph.node):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or not node.input or not node.input[0]:
            continue
        src, dst = node.input[0], node.output[0]
        if dst not in outputs:
            drop.add(idx)
            renames[dst] = src
            removed += 1
            continue
        # dst is a graph output: the producer of src must take over the output's name
        prod = producer.get(src)
        if prod is None or src in outputs or src in inputs:
            kept.append(f"Identity '{node.name or dst}' joins {src} to graph output {dst}: kept to keep the interface")
            continue
        drop.add(idx)
        prod.output[list(prod.output).index(src)] = dst
        renames[src] = dst
        producer[dst] = prod
        removed += 1
    if drop:
        _keep_nodes(graph, [i for i in range(len(graph.node)) if i not in drop])
        rename_all_uses(graph, renames)
    return removed, kept


def _remove_dead(graph: onnx.GraphProto) -> int:
    """Keep the nodes graph outputs depend on (any node order)."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    live: set[int] = set()
    stack = [o.name for o in graph.output]
    while stack:
        idx = producer.get(stack.pop())
        if idx is None or idx in live:
            continue
        live.add(idx)
        stack.extend(node_inputs(graph.node[idx]))
    dead = len(graph.node) - len(live)
    if dead:
        _keep_nodes(graph, sorted(live))
    return dead


def _keep_nodes(graph: onnx.GraphProto, indices: list[int]) -> None:
    """Keep only the nodes at ``indices`` (in that order): linear, unlike repeated ``remove``."""
    replace_repeated(graph.node, [graph.node[i] for i in indices])


def _remove_unused_initializers(graph: onnx.GraphProto) -> int:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node_inputs(node))
    graph_inputs = {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used or t.name in graph_inputs]
    removed = len(graph.initializer) - len(keep)
    if removed:
        replace_repeated(graph.initializer, keep)
    return removed


def _remove_stale_value_info(graph: onnx.GraphProto) -> int:
    live = {o for n in graph.node for o in n.output}
    stale = [v for v in graph.value_info if v.name not in live]
    for v in stale:
        graph.value_info.remove(v)
    return len(stale)


class CleanupPass(Pass[CleanupOptions]):
    name = "cleanup"
    summary = "Remove Identity and dead nodes, unused initializers, stale value_info; sort topologically."
    Options = CleanupOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        g, o = model.graph, self.options
        facts: dict[str, int] = {}
        refused: list[str] = []
        if o.identity:
            facts["identities_removed"], refused = _remove_identities(g)
        if o.dead_nodes:
            facts["dead_nodes_removed"] = _remove_dead(g)
        if o.initializers:
            facts["initializers_removed"] = _remove_unused_initializers(g)
        facts["value_info_removed"] = _remove_stale_value_info(g)
        if o.sort:
            facts["reordered"] = int(topological_sort(g))
        modified = any(v for v in facts.values())
        if modified:
            ctx.log.info("cleanup: %s", ", ".join(f"{k}={v}" for k, v in facts.items() if v))
        return PassResult(model, modified, facts=facts, refused=refused)
