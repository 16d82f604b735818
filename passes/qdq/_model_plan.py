"""Q/DQ over the whole model: the main graph and every If/Loop/Scan body, planned and rewritten together.

Each graph is placed on its own (a branch is a network of its own: ``keep_first_last``
acts per graph); names stay model-wide (unnamed nodes of a body are prefixed with the
path to it, e.g. ``If_0/then_branch/Conv_3``). A body's weight may be a constant of an
enclosing graph (torch exports If branches that way): its int8 copy is stored in the
body that reads it, and the float one is dropped once no graph reads it. Bodies are
rewritten before the graphs that hold them, so every edit lands in the live model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx

from converter.passes.qdq._insert import Inserted, Names, insert_qdq, remove_unread
from converter.passes.qdq._placement import NodePlan, Placement, PlacementRules, place
from converter.passes.qdq._weights import constant_specs, read_constant


@dataclass
class GraphPlan:
    graph: onnx.GraphProto
    label: str
    """'' for the main graph, else the path to the body, ending in '/'."""
    placement: Placement


@dataclass
class ModelPlan:
    graphs: list[GraphPlan] = field(default_factory=list)

    @property
    def nodes(self) -> list[NodePlan]:
        return [n for g in self.graphs for n in g.placement.nodes]

    @property
    def refused(self) -> list[str]:
        return [r for g in self.graphs for r in g.placement.refused]

    @property
    def already_quantized(self) -> list[str]:
        return [r for g in self.graphs for r in g.placement.already_quantized]

    def activation_tensors(self) -> list[str]:
        seen: dict[str, None] = {}
        for g in self.graphs:
            seen.update(dict.fromkeys(g.placement.activation_tensors()))
        return list(seen)

    def drop(self, names: set[str], reason_of: dict[str, str]) -> None:
        for g in self.graphs:
            g.placement.drop(names & {n.name for n in g.placement.nodes}, reason_of)

    def in_subgraphs(self) -> int:
        return sum(len(g.placement.nodes) for g in self.graphs if g.label)


def _walk(graph: onnx.GraphProto, label: str, outer: dict[str, tuple[int, int]]) -> Iterator[tuple[onnx.GraphProto, str, dict[str, tuple[int, int]]]]:
    """(graph, its label, the constants it can read: its own and its enclosing graphs'), parents first."""
    own = {**outer, **constant_specs(graph)}
    yield graph, label, own
    for index, node in enumerate(graph.node):
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
            for k, sub in enumerate(subs):
                tail = f"{attr.name}{k if len(subs) > 1 else ''}"
                yield from _walk(sub, f"{label}{node.name or f'{node.op_type}_{index}'}/{tail}/", own)


def place_model(model: onnx.ModelProto, types: dict[str, int], rules: PlacementRules) -> ModelPlan:
    plan = ModelPlan()
    for graph, label, constants in _walk(model.graph, "", {}):
        plan.graphs.append(GraphPlan(graph, label, place(graph, types, constants, rules, prefix=label)))
    return plan


def _weight_reader(model: onnx.ModelProto, model_dir: str | None) -> Callable[[str], np.ndarray]:
    """name -> value of a constant, read from whichever graph holds it (a body or an enclosing graph)."""
    owners: dict[str, onnx.GraphProto] = {}
    for graph, _, _ in _walk(model.graph, "", {}):
        for name in constant_specs(graph):
            owners.setdefault(name, graph)
    return lambda name: read_constant(owners[name], name, model_dir)


def apply_plan(model: onnx.ModelProto, plan: ModelPlan, scales: dict[str, float], model_dir: str | None) -> Inserted:
    """Rewrite every graph of ``plan`` (bodies first); the float weights nobody reads any more are dropped."""
    names = Names(model)
    read = _weight_reader(model, model_dir)  # an owner is rewritten only after every body below it
    done = Inserted()
    replaced: set[str] = set()
    for g in reversed(plan.graphs):
        if g.placement.nodes:
            replaced |= insert_qdq(g.graph, g.placement.nodes, scales, names, read, done)
    done.removed_constants = remove_unread(model, replaced)
    return done
