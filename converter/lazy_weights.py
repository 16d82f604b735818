"""Weights that stay in their files: how a model of any size is converted in bounded memory.

A model whose external data is large is loaded *lazily* (:func:`converter.model_io.load_model`):
each big initializer of the main graph keeps its ``external_data`` reference and gains one more
entry, :data:`LAZY_KEY`, holding the real path of its file, resolved and checked (inside the model's
folder, in bounds) when the model was loaded. The protobuf then holds the graph and the small
tensors only, so ONNX's C APIs (shape inference) take it in memory whatever the weights weigh, and
the whole model is never serialized into one message.

Every reader of tensor values goes through :func:`to_array`, which reads a lazy tensor's bytes from
its checked file (one array, freed by its user); ONNX Runtime reads them itself, memory-mapped, from
the model's folder (:func:`folder`, see :mod:`converter.ort_session`), and the writer copies them
file to file (:func:`write_external`). :func:`for_onnx` strips the private keys wherever a model
leaves the process (ONNX's checker, ONNX Runtime, files written): no tool outside sees them. The
keys cannot come from a model file: the loader rejects unknown ``external_data`` keys
(:mod:`converter.external_data`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LAZY_KEY = "converter.real_path"
FOLDER_KEY = "converter.folder"
# loaded lazily when the external data files weigh at least this (bytes); tests set it low
THRESHOLD_ENV = "CONVERTER_LAZY_WEIGHTS_BYTES"
DEFAULT_THRESHOLD = 1 << 30
# a tensor below this stays in memory: shape constants and the like are read by many passes
MIN_TENSOR_BYTES = 1 << 16
# offsets in written data files are multiples of this (page size: memory-mappable by ONNX Runtime)
ALIGNMENT = 4096

# numpy dtypes whose bytes are the tensor's raw_data, so a file range maps onto an array directly
_DIRECT = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.UINT64: np.uint64,
    onnx.TensorProto.BOOL: np.bool_,
}


def threshold() -> int:
    """External data of at least this many bytes makes the loader keep weights in their files."""
    raw = os.environ.get(THRESHOLD_ENV, "")
    try:
        return max(0, int(raw)) if raw else DEFAULT_THRESHOLD
    except ValueError:
        return DEFAULT_THRESHOLD


def _entries(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def is_lazy(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == LAZY_KEY for e in t.external_data)


def unreadable(t: onnx.TensorProto) -> bool:
    """Stored externally and not lazy: no value in memory nor a checked file to read it from."""
    return t.data_location == onnx.TensorProto.EXTERNAL and not is_lazy(t)


def mark_lazy(t: onnx.TensorProto, real_path: str, folder: str) -> None:
    """Keep ``t`` in its file (already checked to be ``real_path``, inside the model's real ``folder``)."""
    for key, value in ((LAZY_KEY, real_path), (FOLDER_KEY, folder)):
        e = t.external_data.add()
        e.key, e.value = key, value


def source(t: onnx.TensorProto) -> tuple[str, int, int]:
    """(real path, offset, length in bytes) of a lazy tensor."""
    info = _entries(t)
    offset = int(info.get("offset", "0") or 0)
    length = info.get("length")
    size = int(length) if length else os.path.getsize(info[LAZY_KEY]) - offset
    return info[LAZY_KEY], offset, size


def lazy_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if is_lazy(t)]


def has_lazy(model: onnx.ModelProto) -> bool:
    return any(is_lazy(t) for t in model.graph.initializer)


def lazy_bytes(model: onnx.ModelProto) -> int:
    return sum(source(t)[2] for t in lazy_initializers(model))


def read_bytes(t: onnx.TensorProto) -> bytes:
    path, offset, size = source(t)
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise OSError(f"{path}: tensor {t.name!r} needs {size} bytes at offset {offset}, the file has {len(data)}")
    return data


def _count(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1


def to_array(t: onnx.TensorProto, base_dir: str = "") -> np.ndarray:
    """The tensor's values as a new array, whether in memory or lazy (``numpy_helper.to_array`` otherwise)."""
    if not is_lazy(t):
        return numpy_helper.to_array(t, base_dir=base_dir) if base_dir else numpy_helper.to_array(t)
    dtype = _DIRECT.get(t.data_type)
    if dtype is not None:
        path, offset, _ = source(t)
        arr = np.fromfile(path, dtype=dtype, count=_count(t), offset=offset)
        if arr.size != _count(t):
            raise OSError(f"{path}: tensor {t.name!r} is cut short ({arr.size} of {_count(t)} values)")
        return arr.reshape(tuple(t.dims))
    loaded = onnx.TensorProto()
    loaded.CopyFrom(t)
    del loaded.external_data[:]
    loaded.data_location = onnx.TensorProto.DEFAULT
    loaded.raw_data = read_bytes(t)
    return numpy_helper.to_array(loaded)


def nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data without reading it when it is lazy."""
    if is_lazy(t):
        return source(t)[2]
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return numpy_helper.to_array(t).nbytes


def _strip(t: onnx.TensorProto) -> None:
    kept = [(e.key, e.value) for e in t.external_data if e.key not in (LAZY_KEY, FOLDER_KEY)]
    del t.external_data[:]
    for k, v in kept:
        e = t.external_data.add()
        e.key, e.value = k, v


def for_onnx(model: onnx.ModelProto, relative_to: str | None = None) -> onnx.ModelProto:
    """A copy without the private keys (cheap: lazy tensors hold no data); ``model`` itself if none is lazy.

    With ``relative_to`` (a folder above every lazy file, :func:`folder`), each location is rewritten
    relative to it, so one folder resolves weights from the model's folder and spilled ones alike.
    """
    if not has_lazy(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in lazy_initializers(out):
        path, offset, size = source(t)
        if relative_to is not None:
            _set_location(t, os.path.relpath(path, relative_to), offset, size)
        else:
            _strip(t)
    return out


def folder(model: onnx.ModelProto) -> str | None:
    """The deepest real folder holding every lazy file (the model's folder, or above it once weights were
    spilled, :func:`spill`); None when no weight is lazy."""
    found = {_entries(t)[FOLDER_KEY] for t in lazy_initializers(model)}
    return os.path.commonpath(sorted(found)) if found else None


def spill(model: onnx.ModelProto, path: Path, min_bytes: int | None = None, *, fresh: bool = False) -> onnx.ModelProto:
    """Move the model's big in-memory initializers into the file ``path`` (appended) and make them lazy.

    For a lazy model between passes: whatever a pass computed (int8 or fp16 weights) leaves memory,
    so ONNX's C APIs and ONNX Runtime never get a copy of it. Returns a fresh message (protobuf keeps
    a cleared field's memory until the message goes), ``model`` itself when nothing was moved, unless
    ``fresh`` asks for a new message anyway (one the caller's passes may grow and drop).
    """
    if min_bytes is None:  # what the loader leaves in files, but never shape-sized constants (what shape inference reads)
        min_bytes = max(1024, min(MIN_TENSOR_BYTES, threshold()))
    big = [t for t in model.graph.initializer if not is_lazy(t) and t.HasField("raw_data") and t.ByteSize() >= min_bytes]
    if not big:
        return onnx.ModelProto.FromString(model.SerializeToString()) if fresh else model
    path.parent.mkdir(parents=True, exist_ok=True)
    real, real_folder = os.path.realpath(path), os.path.realpath(path.parent)
    with open(path, "ab") as out:
        for t in big:
            data = t.raw_data
            pad = -out.tell() % ALIGNMENT
            if pad:
                out.write(b"\0" * pad)
            offset = out.tell()
            out.write(data)
            t.ClearField("raw_data")
            _set_location(t, path.name, offset, len(data))
            mark_lazy(t, real, real_folder)
            del data
    return onnx.ModelProto.FromString(model.SerializeToString())


def _initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _initializers(attr.g)
            for g in attr.graphs:
                yield from _initializers(g)


def _copy_range(src: str, offset: int, size: int, out) -> None:
    with open(src, "rb") as fh:
        fh.seek(offset)
        left = size
        while left:
            chunk = fh.read(min(left, 1 << 24))
            if not chunk:
                raise OSError(f"{src} ended {left} bytes early")
            out.write(chunk)
            left -= len(chunk)


def _set_location(t: onnx.TensorProto, location: str, offset: int, size: int) -> None:
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(size))):
        e = t.external_data.add()
        e.key, e.value = k, v
    t.data_location = onnx.TensorProto.EXTERNAL


def write_external(model: onnx.ModelProto, path: Path, size_threshold: int = 1024) -> list[Path]:
    """Write ``model`` to ``path`` with its weights in ``path.name + '.data'``; ``model`` is not changed.

    Lazy tensors are copied file to file in chunks; in-memory tensors of ``size_threshold`` bytes or
    more are written out; offsets are aligned to :data:`ALIGNMENT`. Memory: the graph and whatever
    tensors were already in memory, never the lazy weights.
    """
    out_model = onnx.ModelProto()
    out_model.CopyFrom(model)
    location = path.name + ".data"
    data_path = path.parent / location
    with open(data_path, "wb") as out:
        for t in _initializers(out_model.graph):
            lazy = is_lazy(t)
            if not lazy and not (t.HasField("raw_data") and len(t.raw_data) >= size_threshold):
                continue
            pad = -out.tell() % ALIGNMENT
            if pad:
                out.write(b"\0" * pad)
            offset = out.tell()
            if lazy:
                src, src_offset, size = source(t)
                _copy_range(src, src_offset, size, out)
            else:
                size = out.write(t.raw_data)
                t.ClearField("raw_data")
            _set_location(t, location, offset, size)
    onnx.save_model(out_model, str(path))
    return [path, data_path]
