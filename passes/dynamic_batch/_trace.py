"""Where an input's batch axis is found: follow a tensor's dim back to the graph input it copies.

The analysis starts from the main inputs (their batch axis known). When a node needs the
batch in a dim of a tensor that does not carry it (an LSTM's ``initial_h`` needs it at dim 1),
that dim is followed back through ops that only move dims (Gather on another axis, Unsqueeze,
Squeeze, Transpose, Identity, elementwise ops, If outputs, ...). If it ends at a graph input
whose batch axis is not known yet, the input's axis is found: :class:`InputAxisFound` stops the
walk and the pass starts it again with that input batched there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from converter.passes.dynamic_batch._facts import AxisSource
from converter.passes.dynamic_batch._flags import attr
from converter.passes.dynamic_batch._graph import Refuse
from converter.passes.dynamic_batch._values import is_static, to_ints

if TYPE_CHECKING:
    from converter.passes.dynamic_batch._analysis import Analysis

_MAX_DEPTH = 200

_SAME_DIMS = {
    "Identity", "Cast", "CastLike", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Erf", "Clip", "Dropout", "Not", "Softplus", "Elu", "Selu",
    "HardSigmoid", "HardSwish", "Gelu", "Mish", "QuantizeLinear", "DequantizeLinear",
}
_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater", "And", "Or",
    "Xor", "LessOrEqual", "GreaterOrEqual", "PRelu", "Mod",
}


@dataclass(frozen=True)
class Seed:
    """Where a graph input carries the batch (``axis``; None: it carries none) and how that is known."""

    axis: int | None
    source: AxisSource
    movable: bool = False
    """A default guess (dim 0 equals the batch) that the analysis may move to another dim."""


class InputAxisFound(Exception):
    """The walk met an input whose batch axis was not known; the pass starts again with it batched."""

    def __init__(self, name: str, axis: int, reader: str) -> None:
        super().__init__(f"input '{name}' carries the batch at dim {axis} ({reader} needs it there)")
        self.name, self.axis, self.reader = name, axis, reader


def _ints(a: Analysis, node: onnx.NodeProto, index: int, attribute: str) -> list[int] | None:
    if len(node.input) > index and node.input[index]:
        v = a.value(node.input[index])
        return None if v is None or not is_static(v) else [int(x) for x in to_ints(v).reshape(-1)]
    got = attr(node, attribute)
    return None if got is None else [int(x) for x in got]


def _rank(a: Analysis, name: str) -> int | None:
    dims = a.static.get(name)
    return None if dims is None else len(dims)


def _step(a: Analysis, node: onnx.NodeProto, name: str, pos: int) -> list[tuple[str, int]]:
    """Candidate (tensor, dim) pairs that dim ``pos`` of output ``name`` of ``node`` is a copy of."""
    op, ins = node.op_type, node.input
    out_dims = a.static.get(name)
    if op in _SAME_DIMS:
        return [(ins[0], pos)]
    if op == "Transpose":
        rank = _rank(a, ins[0])
        perm = attr(node, "perm") or (list(reversed(range(rank))) if rank is not None else None)
        return [] if perm is None else [(ins[0], int(perm[pos]))]
    if op == "Unsqueeze":
        axes, rank = _ints(a, node, 1, "axes"), _rank(a, name)
        if axes is None or rank is None:
            return []
        axes = [x + rank if x < 0 else x for x in axes]
        return [] if pos in axes else [(ins[0], pos - sum(1 for x in axes if x < pos))]
    if op == "Squeeze":
        in_dims = a.static.get(ins[0])
        if in_dims is None:
            return []
        axes = _ints(a, node, 1, "axes")
        removed = {x + len(in_dims) if x < 0 else x for x in axes} if axes is not None else {i for i, d in enumerate(in_dims) if d == 1}
        kept = [i for i in range(len(in_dims)) if i not in removed]
        return [(ins[0], kept[pos])] if pos < len(kept) else []
    if op == "Gather":
        rank, q = _rank(a, ins[0]), _rank(a, ins[1])
        if rank is None or q is None:
            return []
        axis = int(attr(node, "axis", 0))
        axis = axis + rank if axis < 0 else axis
        if pos < axis:
            return [(ins[0], pos)]
        return [(ins[0], pos - q + 1)] if pos >= axis + q else []
    if op in ("Slice", "Pad", "Expand", "Tile", "Reshape", "Concat", "Split") or op in _ELEMENTWISE:
        candidates = [x for x in (ins[:1] if op in ("Slice", "Pad", "Expand", "Tile", "Reshape", "Split") else ins) if x]
        found = []
        for x in candidates:
            dims = a.static.get(x)
            if out_dims is None or dims is None:
                continue
            if op == "Reshape":  # the dim survives when what comes before it is the same size
                before = _prod(out_dims[:pos])
                j = next((j for j in range(len(dims)) if _prod(dims[:j]) == before and dims[j] == out_dims[pos]), None)
                if j is not None:
                    found.append((x, j))
                continue
            p = pos - (len(out_dims) - len(dims))
            if op == "Concat" and p == int(attr(node, "axis", 0)) % len(dims):
                continue
            if 0 <= p < len(dims) and dims[p] == out_dims[pos]:
                found.append((x, p))
        return found
    return []


def _prod(dims: tuple[int | None, ...]) -> int | None:
    total = 1
    for d in dims:
        if d is None:
            return None
        total *= d
    return total


def trace_input(a: Analysis, name: str, pos: int, depth: int = 0) -> tuple[str, int] | None:
    """The graph input and dim that dim ``pos`` of ``name`` is a copy of, or None."""
    if depth > _MAX_DEPTH:
        return None
    if name in a.input_names:
        return name, pos
    if name in a.aliases:  # an If output: what its branches returned
        candidates = [(x, pos) for x in a.aliases[name]]
    else:
        node = a.producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        candidates = _step(a, node, name, pos)
    for x, p in candidates:
        if x and p >= 0:
            hit = trace_input(a, x, p, depth + 1)
            if hit is not None:
                return hit
    return None


def check_input_origin(a: Analysis, name: str, pos: int, k: int, reader: str) -> None:
    """Before ``name`` is broadcast to the batch at ``pos``: is that dim really a graph input's batch axis?

    Raises :class:`InputAxisFound` for an input whose axis was not known (or only guessed), and
    :class:`Refuse` naming both inputs where it carries the batch in another dim: inputs that disagree.
    """
    hit = trace_input(a, name, pos)
    if hit is None:
        return
    inp, axis = hit
    seed = a.seeds.get(inp)
    size = a.static.get(inp, ())[axis] if axis < len(a.static.get(inp, ())) else None
    if k == 1 and size == a.B and (seed is None or (seed.movable and seed.axis != axis)):
        raise InputAxisFound(inp, axis, reader)
    lead = next((n for n, s in a.seeds.items() if s.axis is not None and s.source != "found"), "?")
    if seed is not None and seed.axis is not None and seed.axis != axis:
        raise Refuse(f"inputs disagree: it needs the batch of '{lead}' at dim {pos} of '{name}', which is dim {axis} of input '{inp}', "
                     f"but '{inp}' carries the batch at dim {seed.axis}; set axes=[{inp}:N] or inputs=[...]")
    if seed is None and size != a.B * k:
        raise Refuse(f"inputs disagree: it needs the batch of '{lead}' ({a.B}) at dim {pos} of '{name}', which is dim {axis} of input "
                     f"'{inp}' of size {size}; name the batched inputs with inputs=[...] or axes=[...]")


def shared_with_batch(a: Analysis, name: str, pos: int) -> None:
    """Dim ``pos`` of ``name`` (size 1) meets the batch and would be broadcast to every sample.

    When it is a copy of a graph input's dim whose batch dim is not known yet, and that dim has
    the batch's size (an LSTM state ``[layers, 1, hidden]`` sliced and added to batch data),
    it is that input's batch dim (:class:`InputAxisFound`); otherwise nothing happens.
    """
    hit = trace_input(a, name, pos)
    if hit is None or hit[0] in a.seeds:
        return
    inp, axis = hit
    dims = a.static.get(inp, ())
    if axis < len(dims) and dims[axis] == a.B:
        raise InputAxisFound(inp, axis, f"a broadcast of '{name}' to the batch")


__all__ = ["InputAxisFound", "Seed", "check_input_origin", "shared_with_batch", "trace_input"]
