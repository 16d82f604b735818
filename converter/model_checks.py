"""Load-time validation of a parsed model: what ONNX's checker misses and our code would trip over.

:func:`validate_model` runs on every model :func:`converter.model_io.load_model` reads (``inspect``
too, which does not run the checker), after external data was read in. Each finding is a
:class:`~converter.errors.ModelError` (exit 2) with one line naming the tensor, node or field:

- tensors (initializers, sparse initializers, ``Constant`` values and other tensor attributes, in
  every subgraph) whose data size disagrees with their dims and element type, with negative dims,
  an UNDEFINED or unknown element type, or string data in ``raw_data``;
- element types that do not exist (anywhere), UNDEFINED ones on the main graph's inputs and outputs;
- dims below -1 anywhere (-1 is read as dynamic), dim 0 or implausibly large static shapes on main graph inputs;
- duplicate opset imports, opset versions this ONNX does not know, an IR version newer than ONNX's;
- attributes whose declared type is UNDEFINED or disagrees with the field that holds the value.

The fuzzer (``tools/fuzz.py``) found each of these as a crash (exit 4) somewhere downstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx
from onnx import AttributeProto, TensorProto

from converter import lazy_weights
from converter.errors import ModelError

# elements per storage unit in raw_data (bits per element); types missing here are not size-checked
_BITS = {
    TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16, TensorProto.INT16: 16,
    TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8, TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64,
    TensorProto.UINT32: 32, TensorProto.UINT64: 64, TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128, TensorProto.BFLOAT16: 16,
}
for _name, _bits in (("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8), ("FLOAT8E5M2FNUZ", 8), ("FLOAT8E8M0", 8),
                     ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2)):
    if _name in TensorProto.DataType.keys():  # noqa: SIM118 - a protobuf enum wrapper, not a dict
        _BITS[TensorProto.DataType.Value(_name)] = _bits

_KNOWN_TYPES = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
# typed-data fields: values stored per element (complex: two floats; sub-byte types: packed per entry)
_PER_ELEMENT = {TensorProto.COMPLEX64: 2, TensorProto.COMPLEX128: 2}
MAX_INPUT_ELEMENTS = 2**31 - 1


def _type_name(elem: int) -> str:
    try:
        return TensorProto.DataType.Name(elem).lower()
    except ValueError:
        return f"unknown type {elem}"


def _graphs(graph: onnx.GraphProto, where: str) -> Iterator[tuple[onnx.GraphProto, str]]:
    yield graph, where
    for i, node in enumerate(graph.node):
        label = node.name or f"#{i} ({node.op_type})"
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH or attr.HasField("g"):
                yield from _graphs(attr.g, f"subgraph {attr.name!r} of node {label!r}")
            for k, g in enumerate(attr.graphs):
                yield from _graphs(g, f"subgraph {attr.name}[{k}] of node {label!r}")


def _tensors(graph: onnx.GraphProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    for t in graph.initializer:
        yield t, f"initializer {t.name!r}"
    for sp in graph.sparse_initializer:
        yield sp.values, f"sparse initializer {sp.values.name!r} (values)"
        yield sp.indices, f"sparse initializer {sp.values.name!r} (indices)"
    for i, node in enumerate(graph.node):
        label = node.name or f"#{i} ({node.op_type})"
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t, f"attribute {attr.name!r} of node {label!r}"
            for k, t in enumerate(attr.tensors):
                yield t, f"attribute {attr.name}[{k}] of node {label!r}"
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values, f"attribute {attr.name!r} (sparse values) of node {label!r}"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def check_tensor(t: TensorProto, what: str) -> None:
    """Raise ModelError when the tensor's data cannot be what its dims and type say."""
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise ModelError(f"{what} has negative dims {dims}")
    if t.data_type not in _KNOWN_TYPES:
        raise ModelError(f"{what} has element type {_type_name(t.data_type) if t.data_type else 'UNDEFINED (0)'}")
    n = 1
    for d in dims:
        n *= d
    shape = f"{_type_name(t.data_type)} {dims}"
    if t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL:
        # left in its file (lazy weights): its byte range must hold exactly the values its dims say
        bits = _BITS.get(t.data_type)
        if lazy_weights.is_lazy(t) and bits is not None and lazy_weights.source(t)[2] != _ceil_div(n * bits, 8):
            raise ModelError(f"{what} ({shape}) has {lazy_weights.source(t)[2]} bytes of external data, expected {_ceil_div(n * bits, 8)}")
        return
    if t.data_type == TensorProto.STRING:
        if t.raw_data:
            raise ModelError(f"{what} ({shape}) stores strings in raw_data, which ONNX does not allow")
        if len(t.string_data) != n:
            raise ModelError(f"{what} ({shape}) holds {len(t.string_data)} strings, expected {n}")
        return
    bits = _BITS.get(t.data_type)
    if bits is None:
        return
    if t.HasField("raw_data"):
        expected = _ceil_div(n * bits, 8)
        if len(t.raw_data) != expected:
            raise ModelError(f"{what} ({shape}) holds {len(t.raw_data)} bytes of raw_data, expected {expected}")
        return
    field = onnx.helper.tensor_dtype_to_field(t.data_type)
    have = len(getattr(t, field))
    expected = n * _PER_ELEMENT.get(t.data_type, 1) if bits >= 8 else _ceil_div(n * bits, 8)
    if have != expected:
        if have == 0:
            raise ModelError(f"{what} ({shape}) has no data (expected {n} values)")
        raise ModelError(f"{what} ({shape}) holds {have} values in {field}, expected {expected}")


def _type_problem(tp: onnx.TypeProto, undefined_ok: bool) -> str | None:
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(tp, kind).elem_type
        if elem == TensorProto.UNDEFINED:
            return None if undefined_ok else "has element type UNDEFINED (0)"
        if elem not in _KNOWN_TYPES:
            return f"has an element type that does not exist ({elem})"
        return None
    if kind == "sequence_type":
        return _type_problem(tp.sequence_type.elem_type, undefined_ok) if tp.sequence_type.HasField("elem_type") else None
    if kind == "optional_type":
        return _type_problem(tp.optional_type.elem_type, undefined_ok) if tp.optional_type.HasField("elem_type") else None
    if kind == "map_type":
        if tp.map_type.key_type not in _KNOWN_TYPES:
            return f"has a map key type that does not exist ({tp.map_type.key_type})"
        return _type_problem(tp.map_type.value_type, undefined_ok) if tp.map_type.HasField("value_type") else None
    return None


def _shape_dims(tp: onnx.TypeProto) -> list[onnx.TensorShapeProto.Dimension]:
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type") and getattr(tp, kind).HasField("shape"):
        return list(getattr(tp, kind).shape.dim)
    return []


def _check_value_infos(graph: onnx.GraphProto, where: str, main: bool) -> None:
    inits = {t.name for t in graph.initializer} | {sp.values.name for sp in graph.sparse_initializer}
    groups = (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info))
    for kind, infos in groups:
        for vi in infos:
            label = f"{where} {kind} {vi.name!r}" if where else f"{kind} {vi.name!r}"
            problem = _type_problem(vi.type, undefined_ok=not (main and kind != "value_info"))
            if problem:
                raise ModelError(f"{label} {problem}")
            dims = _shape_dims(vi.type)
            values = [d.dim_value for d in dims if d.HasField("dim_value")]
            if any(v < -1 for v in values):  # -1 is an old exporters' way (Paddle) to write a dynamic dim
                raise ModelError(f"{label} has a negative dim in its shape {_fmt(dims)} (only -1, read as dynamic, is accepted)")
            if main and kind == "input" and vi.name not in inits:
                if 0 in values:
                    raise ModelError(f"{label} has a dim of 0 in its shape {_fmt(dims)}: an input cannot be empty; export it with its real size or a symbolic dim")
                n = 1
                for v in values:
                    n *= v
                if n > MAX_INPUT_ELEMENTS:
                    raise ModelError(f"{label} has a static shape {_fmt(dims)} of {n} elements (more than 2**31-1); the shape is corrupt")


def _fmt(dims: list[onnx.TensorShapeProto.Dimension]) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"


# attribute type -> the field that must hold its value (repeated fields: any length is fine)
_ATTR_FIELD = {AttributeProto.FLOAT: "f", AttributeProto.INT: "i", AttributeProto.STRING: "s", AttributeProto.TENSOR: "t",
               AttributeProto.GRAPH: "g", AttributeProto.SPARSE_TENSOR: "sparse_tensor", AttributeProto.TYPE_PROTO: "tp"}
_ATTR_LISTS = {AttributeProto.FLOATS: "floats", AttributeProto.INTS: "ints", AttributeProto.STRINGS: "strings", AttributeProto.TENSORS: "tensors",
               AttributeProto.GRAPHS: "graphs", AttributeProto.SPARSE_TENSORS: "sparse_tensors", AttributeProto.TYPE_PROTOS: "type_protos"}
_ALL_FIELDS = {*_ATTR_FIELD.values(), *_ATTR_LISTS.values()}


def _check_attributes(nodes: Iterable[onnx.NodeProto], where: str) -> None:
    for i, node in enumerate(nodes):
        label = f"node {node.name or f'#{i}'!r} ({node.op_type})" + (f" in {where}" if where else "")
        for attr in node.attribute:
            if attr.ref_attr_name:
                continue  # a function's attribute reference
            if attr.type == AttributeProto.UNDEFINED or attr.type not in {*_ATTR_FIELD, *_ATTR_LISTS}:
                raise ModelError(f"{label} attribute {attr.name!r} has no valid type ({attr.type})")
            own = _ATTR_FIELD.get(attr.type) or _ATTR_LISTS[attr.type]
            others = [f for f in _ALL_FIELDS - {own} if (attr.HasField(f) if f in _ATTR_FIELD.values() else len(getattr(attr, f)))]
            if others:
                raise ModelError(f"{label} attribute {attr.name!r} is declared {AttributeProto.AttributeType.Name(attr.type)} but holds a value in {others[0]!r}")


def _check_opsets(model: onnx.ModelProto) -> None:
    seen: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if domain in seen:
            raise ModelError(f"the model imports domain {domain or 'ai.onnx'!r} twice (opsets {seen[domain]} and {o.version}); keep one opset_import entry per domain")
        seen[domain] = o.version
        if o.version < 1:
            raise ModelError(f"the model imports domain {domain or 'ai.onnx'!r} at opset {o.version}, which does not exist")
    newest = onnx.defs.onnx_opset_version()
    if seen.get("", 0) > newest:
        raise ModelError(f"the model uses ai.onnx opset {seen['']}, newer than this ONNX {onnx.__version__} knows (up to {newest}); re-export it at opset {newest} or lower")
    if model.ir_version > onnx.IR_VERSION:
        raise ModelError(f"the model has IR version {model.ir_version}, newer than this ONNX {onnx.__version__} reads (up to {onnx.IR_VERSION})")


def validate_model(model: onnx.ModelProto, where: str) -> None:
    """Raise :class:`ModelError` (``where: what is wrong``) for a model our tools would crash on."""
    try:
        _check_opsets(model)
        for graph, gwhere in _graphs(model.graph, ""):
            _check_value_infos(graph, gwhere, main=not gwhere)
            _check_attributes(graph.node, gwhere)
            for t, what in _tensors(graph, gwhere):
                check_tensor(t, f"{what} in {gwhere}" if gwhere else what)
        for f in model.functions:
            _check_attributes(f.node, f"function {f.name!r}")
    except ModelError as exc:
        text = str(exc)
        raise ModelError(f"{where}: {text}" + ("" if "; " in text else "; the file is corrupt or was edited: re-export the model")) from None
