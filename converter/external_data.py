"""External data may only come from inside the model's folder.

A tensor stored as external data names a file (``location``) with an ``offset`` and
``length``. ONNX's loader only follows initializers and ``t``/``tensors`` attributes;
sparse tensors (``sparse_initializer``, ``sparse_tensor``/``sparse_tensors``
attributes, a Constant's ``sparse_value``) are left external, and ONNX Runtime,
given a model as bytes, resolves their relative locations against the *current
working folder*. So every reference anywhere in the model is found here
(:func:`external_refs`), checked against the model's folder only
(:func:`check_external_data`), and whatever ONNX's loader left external is read
into memory from the checked file (:func:`load_remaining_external_data`), so no
later consumer reads a file on its own.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from converter import lazy_weights
from converter.errors import ModelError

_KNOWN_KEYS = {"location", "offset", "length", "checksum", "basepath"}


@dataclass
class ExternalRef:
    """One tensor whose data lives in a file, and where in the model it sits."""

    tensor: onnx.TensorProto
    where: str

    @property
    def name(self) -> str:
        return self.tensor.name


def _is_external(t: onnx.TensorProto) -> bool:
    return t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"node #{index} ({node.op_type})"


def _sparse(sp: onnx.SparseTensorProto, where: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    if sp.HasField("values"):
        yield sp.values, f"{where} values"
    if sp.HasField("indices"):
        yield sp.indices, f"{where} indices"


def _nodes(nodes: object, where: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    for i, node in enumerate(nodes):  # type: ignore[attr-defined]
        for attr in node.attribute:
            at = f"{where} {_node_label(node, i)} attribute {attr.name!r}"
            # every field is visited whatever ``attr.type`` says: a reader may look at any of them
            if attr.HasField("t"):
                yield attr.t, at
            for k, t in enumerate(attr.tensors):
                yield t, f"{at}[{k}]"
            if attr.HasField("sparse_tensor"):
                yield from _sparse(attr.sparse_tensor, at)
            for k, sp in enumerate(attr.sparse_tensors):
                yield from _sparse(sp, f"{at}[{k}]")
            if attr.HasField("g"):
                yield from _graph(attr.g, f"{at} >")
            for k, g in enumerate(attr.graphs):
                yield from _graph(g, f"{at}[{k}] >")


def _graph(graph: onnx.GraphProto, where: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    gw = f"{where} graph {graph.name!r}".strip()
    for t in graph.initializer:
        yield t, f"{gw} initializer"
    for k, sp in enumerate(graph.sparse_initializer):
        yield from _sparse(sp, f"{gw} sparse_initializer[{k}]")
    yield from _nodes(graph.node, gw)


def _all_tensors(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every TensorProto a model holds, with a description of where it sits."""
    if model.HasField("graph"):
        yield from _graph(model.graph, "")
    for f in model.functions:
        yield from _nodes(f.node, f"function {f.domain or 'ai.onnx'}.{f.name}")
    for k, info in enumerate(model.training_info):
        if info.HasField("initialization"):
            yield from _graph(info.initialization, f"training_info[{k}] initialization")
        if info.HasField("algorithm"):
            yield from _graph(info.algorithm, f"training_info[{k}] algorithm")


def external_refs(model: onnx.ModelProto) -> list[ExternalRef]:
    """Every tensor anywhere in ``model`` (all graphs, subgraphs, attributes, sparse tensors, functions) stored as external data."""
    return [ExternalRef(t, where) for t, where in _all_tensors(model) if _is_external(t)]


@dataclass(frozen=True)
class _Info:
    location: str
    offset: int
    length: int | None


def _fail(model: Path, ref: ExternalRef, location: str, why: str) -> ModelError:
    return ModelError(f"{model}: external data of tensor {ref.name!r} ({ref.where}) at location {location!r} {why}; external data must be a file inside the model's folder")


def _info(model: Path, ref: ExternalRef) -> _Info:
    entries: dict[str, str] = {}
    for e in ref.tensor.external_data:
        if e.key not in _KNOWN_KEYS:
            raise _fail(model, ref, entries.get("location", ""), f"has an unknown external_data key {e.key!r}")
        entries[e.key] = e.value
    location = entries.get("location", "")
    if not location:
        raise _fail(model, ref, location, "names no file")

    def number(key: str) -> int | None:
        if key not in entries:
            return None
        text = entries[key]
        if not text.isascii() or not text.isdigit():
            raise _fail(model, ref, location, f"has an invalid {key} {text!r} (a non-negative integer is required)")
        return int(text)

    return _Info(location, number("offset") or 0, number("length"))


def _resolve(model: Path, ref: ExternalRef, info: _Info, root: str) -> tuple[Path, str]:
    """(the path as written beside the model, its real path), after checking it stays inside ``root``."""
    loc = info.location
    if not isinstance(loc, str):  # protobuf hands back bytes that are not valid UTF-8
        raise _fail(model, ref, repr(loc), "is not valid UTF-8")
    if "\x00" in loc:
        raise _fail(model, ref, loc, "contains a NUL byte")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[0].isalpha() and loc[1] == ":"):
        raise _fail(model, ref, loc, "is an absolute path")
    parts = loc.replace("\\", "/").split("/")
    depth = 0
    for part in parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                raise _fail(model, ref, loc, "leaves the model's folder ('..')")
        elif part not in ("", "."):
            depth += 1
    written = model.parent / loc
    real = os.path.realpath(written)
    if os.path.commonpath([root, real]) != root:
        raise _fail(model, ref, loc, f"resolves outside the model's folder (to {real})")
    try:
        st = os.lstat(written)
    except FileNotFoundError:
        raise _fail(model, ref, loc, f"is missing: {written}") from None
    except OSError as exc:
        raise _fail(model, ref, loc, f"cannot be read: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise _fail(model, ref, loc, "is a symbolic link (not followed)")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(model, ref, loc, "is not a regular file")
    return written, real


def _check_bounds(model: Path, ref: ExternalRef, info: _Info, real: str) -> None:
    size = os.stat(real).st_size
    if info.offset > size:
        raise _fail(model, ref, info.location, f"has offset {info.offset} beyond the file's {size} bytes")
    if info.length is not None and info.offset + info.length > size:
        raise _fail(model, ref, info.location, f"has offset {info.offset} + length {info.length} beyond the file's {size} bytes")


def check_external_data(model: onnx.ModelProto, model_path: str | os.PathLike[str]) -> list[Path]:
    """Check every external-data reference of ``model`` (read from ``model_path``); return the files, each once.

    Raises :class:`ModelError` (one line naming the tensor and the location) for a location that is
    absolute, leaves the model's folder (``..``, or a symbolic link anywhere on the way), is missing,
    is not a regular file, or whose offset/length exceed the file.
    """
    p = Path(model_path)
    root = os.path.realpath(p.parent)
    files: dict[Path, None] = {}
    for ref in external_refs(model):
        info = _info(p, ref)
        written, real = _resolve(p, ref, info, root)
        _check_bounds(p, ref, info, real)
        files.setdefault(written, None)
    return list(files)


def load_remaining_external_data(model: onnx.ModelProto, model_path: str | os.PathLike[str], *, lazy_min_bytes: int | None = None) -> int:
    """Read into memory every tensor still stored externally (sparse tensors, which ONNX's loader skips).

    Each location is checked again (as by :func:`check_external_data`) and read from the checked
    real path, so the bytes come from the file that was checked and nowhere else. With
    ``lazy_min_bytes``, a main-graph initializer of at least that many bytes is not read but marked
    lazy with its checked real path (:mod:`converter.lazy_weights`). Returns the bytes left lazy.
    """
    p = Path(model_path)
    root = os.path.realpath(p.parent)
    main_initializer = f"graph {model.graph.name!r} initializer" if model.HasField("graph") else None
    left = 0
    for ref in external_refs(model):
        info = _info(p, ref)
        _, real = _resolve(p, ref, info, root)
        _check_bounds(p, ref, info, real)
        size = info.length if info.length is not None else os.stat(real).st_size - info.offset
        if lazy_min_bytes is not None and ref.where == main_initializer and size >= lazy_min_bytes:
            lazy_weights.mark_lazy(ref.tensor, real, root)
            left += size
            continue
        try:
            with open(real, "rb") as fh:
                fh.seek(info.offset)
                data = fh.read() if info.length is None else fh.read(info.length)
        except OSError as exc:
            raise _fail(p, ref, info.location, f"cannot be read: {exc.strerror}") from None
        t = ref.tensor
        t.raw_data = data
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return left
