"""Values of small integer tensors (shapes, sizes, indices) as expressions in the batch.

A :class:`Lin` is ``c + k * batch``. Shape arithmetic in exported models
(``Shape → Gather → Mul → Concat``) stays linear in the batch, so tracking these
values tells the dynamic_batch pass what a shape input will hold at run time.
Values are numpy object arrays of :class:`Lin`; ``None`` means "not known".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from converter import lazy_weights

MAX_ELEMENTS = 64
"""Tensors with more elements are never tracked: shape values are short."""

_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
              onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
              onnx.TensorProto.BOOL}


class NotLinear(ArithmeticError):
    """The result is not of the form c + k * batch (e.g. batch * batch)."""


class Lin:
    """``c + k * batch`` with integer ``c`` and ``k``."""

    __slots__ = ("c", "k")

    def __init__(self, c: int, k: int = 0) -> None:
        self.c = int(c)
        self.k = int(k)

    @property
    def static(self) -> bool:
        return self.k == 0

    def __repr__(self) -> str:
        if not self.k:
            return str(self.c)
        b = "batch" if self.k == 1 else f"{self.k}*batch"
        return b if not self.c else f"{b}{self.c:+d}"

    def __eq__(self, other: object) -> bool:
        o = other if isinstance(other, Lin) else Lin(other) if isinstance(other, (int, np.integer)) else None
        return o is not None and (self.c, self.k) == (o.c, o.k)

    def __hash__(self) -> int:
        return hash((self.c, self.k))

    def __add__(self, other: Any) -> Lin:
        o = lin(other)
        return Lin(self.c + o.c, self.k + o.k)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Lin:
        o = lin(other)
        return Lin(self.c - o.c, self.k - o.k)

    def __rsub__(self, other: Any) -> Lin:
        return lin(other) - self

    def __neg__(self) -> Lin:
        return Lin(-self.c, -self.k)

    def __mul__(self, other: Any) -> Lin:
        o = lin(other)
        if o.k == 0:
            return Lin(self.c * o.c, self.k * o.c)
        if self.k == 0:
            return Lin(o.c * self.c, o.k * self.c)
        raise NotLinear(f"({self}) * ({o})")

    __rmul__ = __mul__

    def div(self, other: Any) -> Lin:
        """ONNX integer division (truncating); exact division only when the batch is involved."""
        o = lin(other)
        if o.k or o.c == 0:
            raise NotLinear(f"({self}) / ({o})")
        if self.k == 0:
            q = abs(self.c) // abs(o.c)
            return Lin(q if (self.c >= 0) == (o.c > 0) else -q)  # truncation toward zero, exact for any size
        if self.k % o.c == 0 and (self.c % o.c == 0 or (self.c >= 0 and self.k > 0 and o.c > 0)):
            # (c + k*b) / d == c // d + (k // d) * b for every b >= 1 (non-negative values truncate as floor)
            return Lin(self.c // o.c, self.k // o.c)
        raise NotLinear(f"({self}) / {o.c}")


def lin(x: Any) -> Lin:
    if isinstance(x, Lin):
        return x
    if isinstance(x, (bool, np.bool_)):
        return Lin(int(x))
    if isinstance(x, (int, np.integer)):
        return Lin(int(x))
    raise TypeError(f"not an integer: {x!r}")


Value = np.ndarray
"""An object array of Lin."""


def from_ints(arr: np.ndarray) -> Value:
    out = np.empty(arr.shape, dtype=object)
    for idx, v in np.ndenumerate(arr):
        out[idx] = Lin(int(v))
    return out


def is_static(v: Value) -> bool:
    return all(x.k == 0 for x in v.flat)


def depends_on_batch(v: Value) -> bool:
    return any(x.k != 0 for x in v.flat)


def to_ints(v: Value) -> np.ndarray:
    if not is_static(v):
        raise NotLinear("value depends on the batch")
    return np.array([x.c for x in v.flat], dtype=np.int64).reshape(v.shape)


def as_list(v: Value) -> list[Lin]:
    return list(v.reshape(-1))


def tensor_value(t: onnx.TensorProto) -> Value | None:
    """The value of an integer tensor, if small enough to track."""
    if t.data_type not in _INT_TYPES:
        return None
    if int(np.prod(t.dims, dtype=np.int64)) > MAX_ELEMENTS:
        return None
    return from_ints(lazy_weights.to_array(t).astype(np.int64))


def constant_node_value(node: onnx.NodeProto) -> Value | None:
    for attr in node.attribute:
        if attr.name == "value":
            return tensor_value(attr.t)
        if attr.name == "value_int":
            return from_ints(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return from_ints(np.array(list(attr.ints), dtype=np.int64))
    return None


# --- evaluators: node, input values (None when unknown), input dims of the node's inputs ---

Evaluator = Callable[[onnx.NodeProto, list["Value | None"], "ShapeLookup"], "list[Value | None]"]


class ShapeLookup:
    """What evaluators may ask about tensors besides their values: dims as Lin."""

    def __init__(self, dims_of: Callable[[str], list[Lin] | None], opset: int) -> None:
        self.dims_of = dims_of
        self.opset = opset


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _binary(fn: Callable[[Lin, Lin], Lin]) -> Evaluator:
    ufunc = np.frompyfunc(fn, 2, 1)

    def ev(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
        if len(vals) < 2 or vals[0] is None or vals[1] is None:
            return [None]
        return [np.asarray(ufunc(vals[0], vals[1]), dtype=object)]

    return ev


def _shape(node: onnx.NodeProto, vals: list[Value | None], look: ShapeLookup) -> list[Value | None]:
    dims = look.dims_of(node.input[0])
    if dims is None:
        return [None]
    r = len(dims)
    start, end = int(_attr(node, "start", 0)), _attr(node, "end", None)
    start = max(0, min(r, start + r if start < 0 else start))
    stop = r if end is None else max(0, min(r, int(end) + r if int(end) < 0 else int(end)))
    out = np.empty((max(0, stop - start),), dtype=object)
    for i, d in enumerate(dims[start:stop]):
        out[i] = d
    return [out]


def _size(node: onnx.NodeProto, vals: list[Value | None], look: ShapeLookup) -> list[Value | None]:
    dims = look.dims_of(node.input[0])
    if dims is None:
        return [None]
    total = Lin(1)
    for d in dims:
        total = total * d
    out = np.empty((), dtype=object)
    out[()] = total
    return [out]


def _gather(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
    data, idx = vals[0], vals[1]
    if data is None or idx is None or not is_static(idx):
        return [None]
    axis = int(_attr(node, "axis", 0))
    return [np.take(data, to_ints(idx), axis=axis)]


def _static_list(v: Value | None) -> list[int] | None:
    if v is None or not is_static(v):
        return None
    return [int(x) for x in to_ints(v).reshape(-1)]


def _slice(node: onnx.NodeProto, vals: list[Value | None], look: ShapeLookup) -> list[Value | None]:
    data = vals[0]
    if data is None:
        return [None]
    if look.opset < 10:
        starts, ends, axes, steps = list(_attr(node, "starts", [])), list(_attr(node, "ends", [])), _attr(node, "axes"), None
    else:
        starts, ends = _static_list(vals[1]), _static_list(vals[2])
        axes = _static_list(vals[3]) if len(vals) > 3 and node.input[3] else None
        steps = _static_list(vals[4]) if len(vals) > 4 and node.input[4] else None
        if starts is None or ends is None or (len(vals) > 3 and node.input[3] and axes is None) or (len(vals) > 4 and node.input[4] and steps is None):
            return [None]
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * data.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a + data.ndim if a < 0 else a] = slice(s, e, st)
    return [data[tuple(index)]]


def _concat(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
    if any(v is None for v in vals):
        return [None]
    return [np.concatenate(vals, axis=int(_attr(node, "axis", 0)))]  # type: ignore[arg-type]


def _axes(node: onnx.NodeProto, vals: list[Value | None]) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        return _static_list(vals[1])
    a = _attr(node, "axes")
    return None if a is None else list(a)


def _unsqueeze(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
    data, axes = vals[0], _axes(node, vals)
    if data is None or axes is None:
        return [None]
    rank = data.ndim + len(axes)
    out = data
    for a in sorted(x + rank if x < 0 else x for x in axes):
        out = np.expand_dims(out, a)
    return [out]


def _squeeze(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
    data, axes = vals[0], _axes(node, vals)
    if data is None:
        return [None]
    if axes is None:
        return [np.squeeze(data)]
    return [np.squeeze(data, axis=tuple(a + data.ndim if a < 0 else a for a in axes))]


def _reshape(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
    data, shape = vals[0], _static_list(vals[1])
    if data is None or shape is None:
        return [None]
    shape = [data.shape[i] if s == 0 and not _attr(node, "allowzero", 0) else s for i, s in enumerate(shape)]
    return [data.reshape(shape)]


def _identity(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
    return [vals[0]]


def _cast(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
    to, v = int(_attr(node, "to", 0)), vals[0]
    if to == onnx.TensorProto.BOOL and v is not None:
        return [from_ints(to_ints(v) != 0) if is_static(v) else None]
    return [v if to in _INT_TYPES else None]


def _transpose(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
    perm = _attr(node, "perm")
    return [None if vals[0] is None else np.transpose(vals[0], None if perm is None else list(perm))]


def _equal(a: Lin, b: Lin) -> bool:
    """Equality that holds for every batch >= 1, or NotLinear when it depends on the batch."""
    d = a - b
    if d.k == 0:
        return d.c == 0
    if (d.k > 0 and d.c + d.k > 0) or (d.k < 0 and d.c + d.k < 0):
        return False  # c + k*batch keeps its sign for every batch >= 1
    raise NotLinear(f"whether {a} == {b} depends on the batch")


def _where(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
    if any(v is None for v in vals) or not is_static(vals[0]):  # type: ignore[arg-type]
        return [None]
    cond = to_ints(vals[0]).astype(bool)  # type: ignore[arg-type]
    return [np.where(cond, vals[1], vals[2])]  # type: ignore[arg-type]


def _static_numpy(fn: Callable[..., np.ndarray], n_out: int = 1) -> Evaluator:
    """Ops evaluated only on fully static inputs (Equal, Where, Range, Max, ...)."""

    def ev(node: onnx.NodeProto, vals: list[Value | None], _: ShapeLookup) -> list[Value | None]:
        if any(v is None or not is_static(v) for v in vals):
            return [None] * n_out
        res = fn(node, *[to_ints(v) for v in vals])
        if res.size > MAX_ELEMENTS:
            return [None] * n_out
        return [from_ints(np.asarray(res).astype(np.int64))]

    return ev


def _constant_of_shape(node: onnx.NodeProto, shape: np.ndarray) -> np.ndarray:
    t = _attr(node, "value")
    fill = int(lazy_weights.to_array(t).reshape(-1)[0]) if t is not None else 0
    if t is not None and t.data_type not in _INT_TYPES:
        raise _NotInt
    return np.full(tuple(int(s) for s in shape), fill, dtype=np.int64)


class _NotInt(Exception):
    pass


EVALUATORS: dict[str, Evaluator] = {
    "Shape": _shape,
    "Size": _size,
    "Gather": _gather,
    "Slice": _slice,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": _reshape,
    "Identity": _identity,
    "Cast": _cast,
    "Transpose": _transpose,
    "Not": _static_numpy(lambda n, x: np.logical_not(x)),
    "Add": _binary(lambda a, b: lin(a) + lin(b)),
    "Sub": _binary(lambda a, b: lin(a) - lin(b)),
    "Mul": _binary(lambda a, b: lin(a) * lin(b)),
    "Div": _binary(lambda a, b: lin(a).div(b)),
    "Neg": lambda n, v, _: [None if v[0] is None else np.asarray(-v[0], dtype=object)],
    "Equal": _binary(lambda a, b: Lin(int(_equal(lin(a), lin(b))))),
    "Where": _where,
    "Max": _static_numpy(lambda n, *xs: np.maximum.reduce(np.broadcast_arrays(*xs))),
    "Min": _static_numpy(lambda n, *xs: np.minimum.reduce(np.broadcast_arrays(*xs))),
    "Mod": _static_numpy(lambda n, a, b: np.fmod(a, b) if int(_attr(n, "fmod", 0)) else np.mod(a, b)),
    "Range": _static_numpy(lambda n, start, limit, delta: np.arange(int(start), int(limit), int(delta))),
    "ConstantOfShape": _static_numpy(_constant_of_shape),
}


def evaluate(node: onnx.NodeProto, vals: Sequence[Value | None], look: ShapeLookup) -> list[Value | None] | None:
    """Values of the node's outputs, or None when the op is not tracked.

    Raises :class:`NotLinear` when an output depends on the batch in a way a
    :class:`Lin` cannot express.
    """
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant":
        return [constant_node_value(node)]
    ev = EVALUATORS.get(node.op_type)
    if ev is None:
        return None
    try:
        outs = ev(node, list(vals), look)
    except (_NotInt, IndexError, ValueError):
        return [None] * len(node.output)  # out-of-range indices, shapes numpy rejects: the value is unknown
    arrays = [None if o is None else o if isinstance(o, np.ndarray) else np.array(o, dtype=object) for o in outs]
    return [None if o is None or o.size > MAX_ELEMENTS else o for o in arrays]

