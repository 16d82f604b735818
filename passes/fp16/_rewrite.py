"""fp16 rewrite: emit the graph with float16 values, a Cast wherever a consumer wants the other precision.

Casts are emitted right before the first node that reads them (their source exists
by then: the graph is sorted first), and every Cast's ``to`` is the precision its
consumer wants, so the result is in topological order with correct Cast types.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter import lazy_weights
from converter.graph_edit import node_inputs, rename_all_uses, unique_name
from converter.passes.fp16._policy import FLOAT, FLOAT16, Flexible, NodePlan, Want, has_subgraph


def to_fp16(values: np.ndarray, min_positive_val: float) -> tuple[np.ndarray, int]:
    """float32 -> float16, with nonzero values smaller than ``min_positive_val`` clamped to it (sign kept)."""
    a = np.array(values, dtype=np.float32, copy=True)
    tiny = (a != 0) & (np.abs(a) < min_positive_val)
    a[tiny] = np.copysign(np.float32(min_positive_val), a[tiny])
    return a.astype(np.float16), int(tiny.sum())


def max_finite_abs(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


class Emitter:
    """Builds the new node list; ``versions`` maps (tensor, precision) to the name holding it."""

    def __init__(self, graph: onnx.GraphProto, homes: dict[str, int], min_positive_val: float) -> None:
        self.homes = homes
        self.min_positive_val = min_positive_val
        self.versions: dict[tuple[str, int], str] = {}
        self.taken = _all_names(graph)
        self.nodes: list[onnx.NodeProto] = []
        self.casts_inserted = 0
        self.values_clamped = 0
        self.renamed: dict[str, str] = {}
        """Graph outputs kept float32 whose float16 producer now writes another name: output -> that name."""

    def fresh(self, base: str) -> str:
        return unique_name(base, self.taken)

    def source(self, tensor: str) -> None:
        """A graph input or constant: it holds its home precision under its own name."""
        self.versions[(tensor, self.homes[tensor])] = tensor

    def ref(self, tensor: str, want: Want) -> str:
        """The name holding ``tensor`` in the wanted precision (a Cast is emitted the first time)."""
        if tensor not in self.homes:
            return tensor
        home = self.homes[tensor]
        src = self.versions[(tensor, home)]
        if want is Want.ANY:
            return src
        elem = FLOAT16 if want is Want.FP16 else FLOAT
        if elem != home and (tensor, elem) not in self.versions:
            dst = self.fresh(f"{tensor}_{'fp16' if elem == FLOAT16 else 'fp32'}")
            self._cast(src, dst, elem)
            self.versions[(tensor, elem)] = dst
        return self.versions[(tensor, elem)]

    def _cast(self, src: str, dst: str, to: int) -> None:
        self.nodes.append(helper.make_node("Cast", [src], [dst], name=self.fresh(f"{dst}_cast"), to=to))
        self.casts_inserted += 1

    def emit(self, node: onnx.NodeProto, plan: NodePlan | None, float32_outputs: set[str]) -> None:
        """Append ``node`` rewritten by ``plan``; ``float32_outputs``: graph outputs that must stay float32."""
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if plan is None:
            self.nodes.append(new)
            return
        for i, want in plan.input_want.items():
            new.input[i] = self.ref(node.input[i], want)
        if has_subgraph(node):
            self._outer_refs_float32(new, set(node.input))
        out_casts = []
        for i, name in enumerate(node.output):
            if not name or name not in self.homes:
                continue
            home = self.homes[name]
            if home == FLOAT16 and name in float32_outputs:
                new.output[i] = self.renamed[name] = self.fresh(f"{name}_fp16")
                out_casts.append((new.output[i], name))
                self.versions[(name, FLOAT)] = name
            self.versions[(name, home)] = new.output[i]
        if plan.flexible is not None and self.homes.get(node.output[0]) == FLOAT16:
            self._retype_flexible(new, plan.flexible)
        self.nodes.append(new)
        for src, dst in out_casts:
            self._cast(src, dst, FLOAT)

    def _outer_refs_float32(self, node: onnx.NodeProto, direct: set[str]) -> None:
        """A node kept float32 with subgraphs: outer-scope float tensors it reads must be float32 there too."""
        renames = {}
        for t in node_inputs(node):
            if t not in direct and t in self.homes:
                name = self.ref(t, Want.FP32)
                if name != t:
                    renames[t] = name
        if renames:
            for attr in node.attribute:
                for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    rename_all_uses(g, renames)
                    for o in g.output:
                        o.name = renames.get(o.name, o.name)

    def _retype_flexible(self, node: onnx.NodeProto, kind: Flexible) -> None:
        if kind is Flexible.CAST:
            _set_attr(node, helper.make_attribute("to", FLOAT16))
            return
        attr = next((a for a in node.attribute if a.name in ("value", "value_float", "value_floats")), None)
        if attr is None:  # ConstantOfShape without value: float32 zero
            values = np.zeros(1, np.float32)
        elif attr.name == "value":
            values = lazy_weights.to_array(attr.t)
        else:
            values = np.array(attr.f if attr.name == "value_float" else list(attr.floats), np.float32)
        half, clamped = to_fp16(values, self.min_positive_val)
        self.values_clamped += clamped
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(half)))


def _set_attr(node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == attr.name:
            node.attribute[i].CopyFrom(attr)
            return
    node.attribute.append(attr)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info]} | {t.name for t in graph.initializer}
    for n in graph.node:
        names.update(n.output)
        names.add(n.name)
        if has_subgraph(n):
            for a in n.attribute:
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    names |= _all_names(g)
    return names


def convert_initializers(graph: onnx.GraphProto, names: Iterable[str], min_positive_val: float) -> int:
    """Replace the named float32 initializers by float16 ones; returns how many values were clamped."""
    wanted, clamped = set(names), 0
    for i, t in enumerate(graph.initializer):
        if t.name in wanted:
            half, n = to_fp16(lazy_weights.to_array(t), min_positive_val)
            clamped += n
            graph.initializer[i].CopyFrom(numpy_helper.from_array(half, t.name))
    return clamped


def retype_values(graph: onnx.GraphProto, homes: dict[str, int], renamed: dict[str, str], keep_io_types: bool) -> None:
    """Element types of value_info, inputs and outputs after the rewrite."""
    for vi in graph.value_info:
        if vi.name in homes and vi.type.tensor_type.elem_type == FLOAT:
            vi.type.tensor_type.elem_type = homes[vi.name]
            vi.name = renamed.get(vi.name, vi.name)
    if keep_io_types:
        return
    for vi in [*graph.input, *graph.output]:
        if vi.name in homes and vi.type.tensor_type.elem_type == FLOAT:
            vi.type.tensor_type.elem_type = homes[vi.name]
