"""specialize's options and the values it fixes: ``NAME=VALUE`` entries, parsed, cast and checked against the model."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.errors import UsageError, shorten
from converter.graph_edit import replace_repeated


@dataclass(frozen=True)
class SpecializeOptions:
    inputs: tuple[str, ...] = field(default=(), metadata={"help": "graph inputs to fix, NAME=VALUE: a scalar (int, float, true/false) or, for a 1-D input, a list [a,b,...]; "
                                                                  "cast to the input's element type and checked against its shape, e.g. inputs=[sr=16000]"})
    fold: bool = field(default=True, metadata={"help": "run fold_constants (without Conv fusion) after fixing the inputs and after each round of inlining, and cleanup at the end; "
                                                        "false only inlines the Ifs whose condition the fixed values decide"})

    def __post_init__(self) -> None:
        parse_entries(self.inputs)  # ValueError: the options parser turns it into a usage error naming the pass


def parse_entries(entries: tuple[str, ...]) -> list[tuple[str, str]]:
    """``("sr=16000", "x=[1", "2]")`` → ``[("sr", "16000"), ("x", "[1,2]")]``.

    The option parser splits a list on every comma, so a bracketed value is split too: pieces are
    joined again while a bracket is open. ValueError on an entry without ``=`` or a name given twice.
    """
    joined: list[str] = []
    depth = 0
    for piece in entries:
        if depth > 0:
            joined[-1] += "," + piece
        else:
            joined.append(piece)
        depth += piece.count("[") - piece.count("]")
    if depth:
        raise ValueError(f"inputs entry '{shorten(joined[-1], 60)}' has unbalanced brackets")
    out: list[tuple[str, str]] = []
    for entry in joined:
        name, sep, value = entry.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"inputs entry '{shorten(entry, 60)}' must be NAME=VALUE (e.g. inputs=[sr=16000])")
        if any(name == n for n, _ in out):
            raise ValueError(f"inputs names '{shorten(name, 60)}' twice")
        out.append((name, value))
    return out


def _items(text: str) -> tuple[list[str], bool]:
    """The value's elements as text, and whether it was written as a list."""
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        return [p.strip() for p in re.split(r"[,|]", t[1:-1]) if p.strip()], True
    return [t], False


def _element(text: str, dtype: np.dtype, where: str) -> object:
    low = text.lower()
    if dtype == np.bool_:
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise UsageError(f"{where}: '{shorten(text, 40)}' is not a boolean (true, false, 1 or 0)")
    if low in ("true", "false"):
        return int(low == "true")
    try:
        number: float | int = int(text, 0)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise UsageError(f"{where}: '{shorten(text, 40)}' is not a number") from None
    if np.issubdtype(dtype, np.integer):
        if isinstance(number, float):
            if not number.is_integer():
                raise UsageError(f"{where}: {shorten(text, 40)} is not an integer, and the input is {dtype}")
            number = int(number)
        info = np.iinfo(dtype)
        if not info.min <= number <= info.max:
            raise UsageError(f"{where}: {shorten(text, 40)} does not fit {dtype} (range {info.min} to {info.max})")
        return number
    cast = np.asarray(number, dtype=np.float64).astype(dtype)
    if math.isfinite(float(number)) and not np.isfinite(cast):
        raise UsageError(f"{where}: {shorten(text, 40)} does not fit {dtype} (it would become {cast})")
    return number


def _declared_dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    """The input's dims (None where dynamic), or None when its shape is not declared."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _shape_text(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def value_for(vi: onnx.ValueInfoProto, text: str) -> np.ndarray:
    """``text`` as an array of the input's element type and a shape its declared shape accepts."""
    where = f"input '{vi.name}'"
    if not vi.type.HasField("tensor_type"):
        raise UsageError(f"{where} is not a tensor; only tensor inputs can be fixed")
    elem = vi.type.tensor_type.elem_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or not (dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)
        raise UsageError(f"{where} has element type {name}; only bool, integer and float inputs can be fixed")
    items, is_list = _items(text)
    values = [_element(t, dtype, where) for t in items]
    array = np.array(values, dtype=np.float64 if dtype.kind == "f" else object).astype(dtype)
    dims = _declared_dims(vi)
    if not is_list:
        array = array.reshape(())
        if dims is None or dims == []:
            return array
        if len(dims) == 1 and dims[0] in (1, None):
            return array.reshape(1)
        raise UsageError(f"{where} has shape {_shape_text(dims)}; a scalar fits only a rank-0 input or a 1-D input of one element")
    if dims is None:
        return array
    if len(dims) != 1:
        raise UsageError(f"{where} has shape {_shape_text(dims)}; a list fits only a 1-D input (rank-0 inputs take a scalar)")
    if dims[0] is not None and dims[0] != array.size:
        raise UsageError(f"{where} has shape {_shape_text(dims)}; the list has {array.size} elements")
    return array


def fix_inputs(model: onnx.ModelProto, entries: list[tuple[str, str]]) -> dict[str, object]:
    """Turn each named graph input into an initializer holding its value; returns the values fixed (as plain lists/scalars).

    All entries are checked before the model changes. An input that already had an initializer (a default
    value old exporters write) gets the new value.
    """
    g = model.graph
    inputs = {vi.name: vi for vi in g.input}
    unknown = [name for name, _ in entries if name not in inputs]
    if unknown:
        inits = {t.name for t in g.initializer}
        listed = ", ".join(n for n in inputs if n not in inits) or "none"
        raise UsageError(f"'{shorten(unknown[0], 60)}' is not an input of the model; its inputs: {shorten(listed, 200)}")
    arrays = {name: value_for(inputs[name], text) for name, text in entries}
    if not arrays:
        return {}
    replace_repeated(g.input, [vi for vi in g.input if vi.name not in arrays])
    replace_repeated(g.initializer, [t for t in g.initializer if t.name not in arrays])
    g.initializer.extend(numpy_helper.from_array(a, name) for name, a in arrays.items())
    model.ir_version = max(model.ir_version, 4)  # before IR 4 every initializer had to be a graph input
    return {name: a.tolist() for name, a in arrays.items()}
