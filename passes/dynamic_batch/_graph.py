"""Graph building blocks for the dynamic_batch pass: the run-time batch, shape tensors, new constants.

Everything computed from the batch alone (``Shape(x)[0]``, ``batch * k``, shape
vectors mixing constants and the batch) goes into a prelude placed before every
other node, so any node may use it wherever it sits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.graph_info import iter_graphs
from converter.passes.dynamic_batch._values import Lin

PREFIX = "dynamic_batch"


class Refuse(Exception):
    """The node cannot be made batch-independent without risking wrong results (the message says why)."""


class GraphEdits:
    """New names, constants and prelude nodes for one run of the pass."""

    def __init__(self, graph: onnx.GraphProto, opset: int, batch_source: str, ir_version: int = 8, batch_axis: int = 0) -> None:
        self.graph = graph
        self.ir_version = ir_version
        self.opset = opset
        self.batch_source = batch_source
        self.batch_axis = batch_axis
        self._taken: set[str] = {t.name for t in graph.initializer} | {v.name for v in graph.input}
        for g in iter_graphs(graph):
            for n in g.node:
                self._taken.update(n.output)
                self._taken.add(n.name)
        self.prelude: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._consts: dict[tuple, str] = {}
        self._pieces: dict[tuple, str] = {}
        self._batch: str | None = None

    def unique(self, base: str) -> str:
        name, i = f"{PREFIX}/{base}", 1
        while name in self._taken:
            i += 1
            name = f"{PREFIX}/{base}_{i}"
        self._taken.add(name)
        return name

    def make_node(self, op: str, inputs: Sequence[str], base: str, **attrs: object) -> onnx.NodeProto:
        """A new node with one fresh output named after ``base``."""
        if op == "Expand" and self.opset < 8:
            raise Refuse(f"broadcasting to the run-time batch needs Expand (opset >= 8); the model has opset {self.opset}")
        out = self.unique(base)
        return helper.make_node(op, list(inputs), [out], name=self.unique(f"{base}/{op}"), **attrs)

    def const_int64(self, values: Iterable[int], *, scalar: bool = False, base: str = "shape") -> str:
        vals = tuple(int(v) for v in values)
        key = (vals, scalar)
        if key not in self._consts:
            arr = np.array(vals[0] if scalar else vals, dtype=np.int64)
            name = self.unique(base)
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def batch(self) -> str:
        """An int64 [1] tensor holding the run-time batch: its dim of the main input (dim 0 unless ``axes=`` says)."""
        if self._batch is None:
            ax = self.batch_axis
            if self.opset >= 15:
                node = self.make_node("Shape", [self.batch_source], "batch", start=ax, end=ax + 1)
                self.prelude.append(node)
            else:
                shape = self.make_node("Shape", [self.batch_source], "input_shape")
                node = self.make_node("Gather", [shape.output[0], self.const_int64([ax], base="zero" if ax == 0 else "axis")], "batch", axis=0)
                self.prelude.extend([shape, node])
            self._batch = node.output[0]
        return self._batch

    def _batch_piece(self, value: Lin) -> str:
        """An int64 [1] tensor equal to ``value`` (c + k * batch) at run time."""
        key = ("piece", value.c, value.k)
        if key in self._pieces:
            return self._pieces[key]
        out = self.batch()
        if value.k != 1:
            node = self.make_node("Mul", [out, self.const_int64([value.k], base="k")], f"batch_x{value.k}")
            self.prelude.append(node)
            out = node.output[0]
        if value.c:
            node = self.make_node("Add", [out, self.const_int64([value.c], base="c")], "batch_plus")
            self.prelude.append(node)
            out = node.output[0]
        self._pieces[key] = out
        return out

    def shape_tensor(self, pieces: Sequence[Lin], base: str = "shape") -> str:
        """A 1-D int64 tensor with these elements: a constant when none depends on the batch."""
        if all(p.static for p in pieces):
            return self.const_int64([p.c for p in pieces], base=base)
        key = tuple((p.c, p.k) for p in pieces)
        if key in self._pieces:
            return self._pieces[key]
        parts: list[str] = []
        run: list[int] = []
        for p in pieces:
            if p.static:
                run.append(p.c)
                continue
            if run:
                parts.append(self.const_int64(run, base=base))
                run = []
            parts.append(self._batch_piece(p))
        if run:
            parts.append(self.const_int64(run, base=base))
        if len(parts) == 1:
            out = parts[0]
        else:
            node = self.make_node("Concat", parts, base, axis=0)
            self.prelude.append(node)
            out = node.output[0]
        self._pieces[key] = out
        return out

    def broadcast_to_batch(self, tensor: str, rank: int, pos: int, k: int, static_dim: int) -> onnx.NodeProto:
        """A node making dim ``pos`` of ``tensor`` (size ``static_dim``) equal ``k * batch``.

        Size 1 → Expand (a broadcast); size k → Tile (``batch`` copies, batch-major).
        """
        if static_dim == 1:
            shape = self.shape_tensor([Lin(0, k) if i == pos else Lin(1) for i in range(rank)], base="expand_shape")
            return self.make_node("Expand", [tensor, shape], f"{_short(tensor)}/batched")
        if static_dim != k:
            raise ValueError(f"cannot broadcast a dim of size {static_dim} to {k} * batch")
        reps = self.shape_tensor([Lin(0, 1) if i == pos else Lin(1) for i in range(rank)], base="tile_repeats")
        return self.make_node("Tile", [tensor, reps], f"{_short(tensor)}/batched")


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1] or "t"
