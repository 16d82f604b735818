"""Partially known integer values: shapes whose dims are partly static, and the arithmetic on them.

A :class:`Value` is a small integer (or bool) tensor of at most :data:`MAX_ELEMENTS`
elements, held as a numpy object array; each element is a sympy integer when known, else a
sympy expression in the symbolic dims it was computed from (``batch``, ``8*batch``,
``floor(seq/2)``). ``Shape`` of a tensor gives one element per dim: its static size, the
symbol of its ``dim_param``, or a symbol of its own for an unknown dim (named after the
tensor and position, so ``Shape(x)[i]`` and dim ``i`` of ``x`` are the same symbol). Dim
symbols are non-negative integers; results that cannot be expressed (a division whose sign
is unknown) get a fresh symbol of their own, equal to nothing else.

:func:`propagate` computes a node's output from its inputs' values with ONNX's semantics
(integer ``Div`` truncates, ``Mod`` takes the divisor's sign, ``Slice`` clamps) and returns
None where it cannot tell: out-of-range indices, division by zero, overflow, other ops, float
results. A value whose elements are all known is a constant; :meth:`Value.array` gives it with
the exact dtype and shape the node produces (a rank-0 scalar stays rank 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import sympy
from onnx import helper

from converter import lazy_weights
from converter.passes.fold_constants._shapes import Dim, TensorType

MAX_ELEMENTS = 64
"""Larger tensors are never tracked: shape values are small."""

TP = onnx.TensorProto
INT_TYPES = frozenset({TP.INT64, TP.INT32, TP.INT16, TP.INT8, TP.UINT64, TP.UINT32, TP.UINT16, TP.UINT8})
TRACKED_TYPES = INT_TYPES | {TP.BOOL}
_NAN = sympy.nan


@dataclass(frozen=True, eq=False)
class Value:
    data: np.ndarray
    """An object array of sympy expressions, in the tensor's shape."""
    elem_type: int

    @property
    def rank(self) -> int:
        return self.data.ndim

    @property
    def elems(self) -> tuple[sympy.Expr, ...]:
        return tuple(self.data.flat)

    @property
    def known(self) -> bool:
        return all(e.is_Integer for e in self.data.flat)

    def array(self) -> np.ndarray:
        dtype = helper.tensor_dtype_to_np_dtype(self.elem_type)
        return np.array([int(e) for e in self.data.flat], dtype=dtype).reshape(self.data.shape)


def _obj(items, shape=None) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = list(items)
    return arr.reshape(shape if shape is not None else (len(items),))


def value_of_array(arr: np.ndarray, elem_type: int) -> Value | None:
    """A constant as a Value, when it is a small integer or bool tensor."""
    if elem_type not in TRACKED_TYPES or arr.size > MAX_ELEMENTS:
        return None
    return Value(_obj([sympy.Integer(int(v)) for v in arr.reshape(-1)], arr.shape), elem_type)


def dim_symbol(tensor: str, index: int, dim: Dim) -> sympy.Expr:
    """Dim ``index`` of ``tensor``: its size, its dim_param's symbol, or a symbol of its own when unknown."""
    if isinstance(dim, int):
        return sympy.Integer(dim)
    return sympy.Symbol(dim if dim else f"?{tensor}[{index}]", integer=True, nonnegative=True)


def _fits(v: sympy.Expr, elem_type: int) -> bool:
    if not v.is_Integer or elem_type not in INT_TYPES:
        return True
    info = np.iinfo(helper.tensor_dtype_to_np_dtype(elem_type))
    return info.min <= int(v) <= info.max


def shape_value(node: onnx.NodeProto, t: TensorType | None) -> Value | None:
    """``Shape`` (with ``start``/``end``) or ``Size`` of a tensor whose rank is known."""
    if t is None or t.sym is None:
        return None
    dims = [dim_symbol(node.input[0], i, d) for i, d in enumerate(t.sym)]
    if node.op_type == "Size":
        return Value(_obj([sympy.Mul(*dims)], ()), TP.INT64)
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(dims)
    start, end = (max(0, min(rank, s + rank if s < 0 else s)) for s in (attrs.get("start", 0), attrs.get("end", rank)))
    return Value(_obj(dims[start:end]), TP.INT64) if end - start <= MAX_ELEMENTS else None


# ---------------------------------------------------------------- layout ops


def _ints(v: Value | None) -> list[int] | None:
    return [int(e) for e in v.data.flat] if v is not None and v.known else None


def _input(node: onnx.NodeProto, ins: Sequence[Value | None], index: int, attr: str) -> tuple[bool, list[int] | None]:
    """(given, ints) of an optional ints input that older opsets take as an attribute."""
    for a in node.attribute:
        if a.name == attr:
            return True, list(a.ints)
    if len(ins) > index and node.input[index]:
        return True, _ints(ins[index])
    return False, None


def _axes(given: bool, axes: list[int] | None, rank: int) -> list[int] | None:
    if not given:
        return []
    if axes is None or any(not -rank <= a < rank for a in axes):
        return None
    return sorted(a % rank for a in axes)


def _gather(node, ins, attrs):
    data, idx = ins[0], _ints(ins[1])
    if data is None or idx is None or data.rank == 0:
        return None
    axis = attrs.get("axis", 0) % data.rank
    n = data.data.shape[axis]
    picked = np.array([i + n if i < 0 else i for i in idx], dtype=np.int64).reshape(ins[1].data.shape)
    if np.any((picked < 0) | (picked >= n)):
        return None
    return Value(_arr(np.take(data.data, picked, axis=axis)), data.elem_type)


def _slice(node, ins, attrs):
    data = ins[0]
    if data is None or data.rank == 0:
        return None
    if "starts" in attrs:  # opset < 10
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and node.input[3] else None
        steps = _ints(ins[4]) if len(ins) > 4 and node.input[4] else None
        if starts is None or ends is None or (len(ins) > 3 and node.input[3] and axes is None) or (len(ins) > 4 and node.input[4] and steps is None):
            return None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    out = data.data
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step == 0 or not -data.rank <= axis < data.rank:
            return None
        n = out.shape[axis % data.rank]
        start, end = (s + n if s < 0 else s for s in (start, end))
        if step > 0:
            start, end = max(0, min(n, start)), max(0, min(n, end))
        else:
            start, end = max(0, min(n - 1, start)), max(-1, min(n - 1, end))
        out = np.take(out, list(range(start, end, step)), axis=axis % data.rank)
    return Value(out, data.elem_type)


def _squeeze(node, ins, attrs):
    data = ins[0]
    if data is None:
        return None
    axes = _axes(*_input(node, ins, 1, "axes"), data.rank)
    if axes is None or any(data.data.shape[a] != 1 for a in axes):
        return None
    return Value(np.squeeze(data.data, axis=tuple(axes)) if axes else np.squeeze(data.data), data.elem_type)


def _unsqueeze(node, ins, attrs):
    data = ins[0]
    given, axes = _input(node, ins, 1, "axes")
    if data is None or not given or axes is None:
        return None
    axes = _axes(True, axes, data.rank + len(axes))
    if axes is None or len(set(axes)) != len(axes):
        return None
    out = data.data
    for a in axes:
        out = np.expand_dims(out, a)
    return Value(out, data.elem_type)


def _concat(node, ins, attrs):
    if not ins or any(v is None for v in ins) or len({v.elem_type for v in ins}) != 1 or len({v.rank for v in ins}) != 1 or ins[0].rank == 0:
        return None
    try:
        return Value(np.concatenate([v.data for v in ins], axis=attrs.get("axis", 0)), ins[0].elem_type)
    except (ValueError, np.exceptions.AxisError):
        return None


def _reshape(node, ins, attrs):
    data, shape = ins[0], _ints(ins[1])
    if data is None or shape is None:
        return None
    if not attrs.get("allowzero"):
        if any(s == 0 and i >= data.rank for i, s in enumerate(shape)):
            return None
        shape = [data.data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    try:
        return Value(data.data.reshape(shape), data.elem_type)
    except ValueError:
        return None


def _transpose(node, ins, attrs):
    data = ins[0]
    if data is None:
        return None
    perm = attrs.get("perm", list(range(data.rank))[::-1])
    return Value(np.transpose(data.data, perm), data.elem_type) if sorted(perm) == list(range(data.rank)) else None


def _constant_of_shape(node, ins, attrs):
    shape = _ints(ins[0])
    value = next((a.t for a in node.attribute if a.name == "value"), None)
    elem_type = value.data_type if value is not None else TP.FLOAT
    if shape is None or elem_type not in TRACKED_TYPES or any(s < 0 for s in shape) or int(np.prod(shape)) > MAX_ELEMENTS:
        return None
    fill = sympy.Integer(int(lazy_weights.to_array(value).reshape(-1)[0]))
    return Value(_obj([fill] * int(np.prod(shape)), tuple(shape)), elem_type)


def _cast(node, ins, attrs):
    data, to = ins[0], attrs.get("to")
    if data is None or to not in TRACKED_TYPES:
        return None
    if to == TP.BOOL:
        return Value(_map(lambda e: sympy.Integer(int(e != 0)) if e.is_Integer else (sympy.Integer(1) if e.is_positive else _NAN), data.data), to)
    return Value(data.data, to) if all(_fits(e, to) for e in data.data.flat) else None  # no wrap-around


# ---------------------------------------------------------------- element-wise


def _arr(x) -> np.ndarray:
    """An object array, also of what numpy returns for a 0-d result (the bare element)."""
    if isinstance(x, np.ndarray):
        return x.astype(object)
    out = np.empty((), dtype=object)
    out[()] = x
    return out


def _map(fn: Callable, *arrays: np.ndarray) -> np.ndarray:
    return _arr(np.frompyfunc(fn, len(arrays), 1)(*arrays))


def _trunc_div(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr | None:
    if b.is_Integer and int(b) == 0:
        return None
    if a.is_Integer and b.is_Integer:
        q = abs(int(a)) // abs(int(b))
        return sympy.Integer(q if (int(a) >= 0) == (int(b) > 0) else -q)
    return sympy.floor(a / b) if a.is_nonnegative and b.is_positive else _NAN


def _mod(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr | None:
    if b.is_Integer and int(b) == 0:
        return None
    if a.is_Integer and b.is_Integer:
        return sympy.Integer(int(a) % int(b))  # the divisor's sign, as ONNX Mod with fmod=0
    return sympy.Mod(a, b) if a.is_nonnegative and b.is_positive else _NAN


def _compare(op: str) -> Callable[[sympy.Expr, sympy.Expr], sympy.Expr]:
    def cmp(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
        d = sympy.simplify(a - b)
        truth = {"Equal": d.is_zero, "Less": d.is_negative, "Greater": d.is_positive, "LessOrEqual": d.is_nonpositive, "GreaterOrEqual": d.is_nonnegative}[op]
        return _NAN if truth is None else sympy.Integer(int(bool(truth)))

    return cmp


def _logic(fn: Callable[[bool, bool], bool]) -> Callable[[sympy.Expr, sympy.Expr], sympy.Expr]:
    return lambda a, b: sympy.Integer(int(fn(bool(a), bool(b)))) if a.is_Integer and b.is_Integer else _NAN


_BINARY: dict[str, Callable[[sympy.Expr, sympy.Expr], sympy.Expr | None]] = {
    "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b, "Div": _trunc_div, "Mod": _mod,
    "Max": sympy.Max, "Min": sympy.Min, "And": _logic(lambda a, b: a and b), "Or": _logic(lambda a, b: a or b),
    **{op: _compare(op) for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")},
}
_UNARY = {"Neg": lambda a: -a, "Abs": sympy.Abs, "Not": lambda a: sympy.Integer(1 - int(a)) if a.is_Integer else _NAN}
_BOOL_OUT = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or"})


def _safe(fn: Callable) -> Callable:
    return lambda *args: _NAN if any(a is None or a is _NAN for a in args) else (r if (r := fn(*args)) is not None else None)


def _elementwise(node, ins, attrs):
    op = node.op_type
    given = [v for v, name in zip(ins, node.input, strict=True) if name]
    if not given or any(v is None for v in given) or (op == "Mod" and attrs.get("fmod")):
        return None
    try:
        np.broadcast_shapes(*(v.data.shape for v in given))
    except ValueError:
        return None
    if op == "Where":
        if len(ins) != 3 or ins[1].elem_type != ins[2].elem_type or not ins[0].known:
            return None
        elem_type, out = ins[1].elem_type, _arr(np.where(ins[0].array().astype(bool), ins[1].data, ins[2].data))
    elif op == "Clip":  # opset 11+: optional min and max inputs (older Clips are float-only)
        if len({v.elem_type for v in given}) != 1 or any(v.rank for v in given[1:]):
            return None
        elem_type, out = ins[0].elem_type, ins[0].data
        for fn, k in ((sympy.Max, 1), (sympy.Min, 2)):
            if len(ins) > k and node.input[k]:
                out = _map(_safe(fn), out, ins[k].data)
    elif op in _UNARY:
        elem_type, out = ins[0].elem_type, _map(_safe(_UNARY[op]), ins[0].data)
    else:
        if len({v.elem_type for v in ins}) != 1:
            return None
        elem_type, out = (TP.BOOL if op in _BOOL_OUT else ins[0].elem_type), ins[0].data
        for v in ins[1:]:
            out = _map(_safe(_BINARY[op]), out, v.data)
    if any(e is None for e in out.flat):
        return None
    fresh = [sympy.Symbol(f"?{node.output[0]}#{k}", integer=True) if e is _NAN or e.has(_NAN) else e for k, e in enumerate(out.flat)]
    if not all(_fits(e, elem_type) for e in fresh):
        return None
    return Value(_obj(fresh, np.shape(out)), elem_type)


def _reduce(node, ins, attrs):
    data = ins[0]
    if data is None or data.rank != 1 or data.elem_type not in INT_TYPES:
        return None
    given, axes = _input(node, ins, 1, "axes")
    if not given and attrs.get("noop_with_empty_axes"):
        return data
    if (given and axes not in ([0], [-1])) or (given and axes is None):
        return None
    total = sympy.Mul(*data.data.flat) if node.op_type == "ReduceProd" else sympy.Add(*data.data.flat)
    if not _fits(total, data.elem_type):
        return None
    return Value(_obj([total], (1,) if attrs.get("keepdims", 1) else ()), data.elem_type)


_OPS = {
    "Gather": _gather, "Slice": _slice, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": _concat,
    "Reshape": _reshape, "Transpose": _transpose, "ConstantOfShape": _constant_of_shape, "Cast": _cast,
    "Identity": lambda node, ins, attrs: ins[0], "ReduceProd": _reduce, "ReduceSum": _reduce,
    **{op: _elementwise for op in (*_BINARY, *_UNARY, "Where", "Clip")},
}


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.INT:
            out[a.name] = a.i
        elif a.type == onnx.AttributeProto.INTS:
            out[a.name] = list(a.ints)
    return out


def propagate(node: onnx.NodeProto, ins: Sequence[Value | None]) -> Value | None:
    """The value of a single-output node's output from its inputs' values, or None when it cannot tell."""
    fn = _OPS.get(node.op_type)
    if fn is None or len(node.output) != 1:
        return None
    result = fn(node, list(ins), _attrs(node))
    if result is None or result.data.size > MAX_ELEMENTS:
        return None
    return result
