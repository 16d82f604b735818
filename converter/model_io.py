"""Model I/O: load with clear errors, hash, and save atomically.

Saving never writes over the input model and never leaves a half-written file:
everything is written into a temporary folder beside the target, then renamed.
Models whose weights were stored as external data keep them external.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from converter import lazy_weights
from converter.errors import ModelError, UsageError, describe_exception
from converter.external_data import check_external_data, load_remaining_external_data
from converter.model_checks import validate_model

# Protobuf cannot serialize a single message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class LoadedModel:
    """A model read from disk, with the facts about its file."""

    proto: onnx.ModelProto
    path: Path
    sha256: str
    external_data_files: list[Path] = field(default_factory=list)
    lazy_bytes: int = 0  # weights left in their files (converter.lazy_weights)

    @property
    def has_external_data(self) -> bool:
        return bool(self.external_data_files)

    @property
    def file_size(self) -> int:
        return self.path.stat().st_size + sum(p.stat().st_size for p in self.external_data_files)


def sha256_of_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load an ONNX model; every failure is a :class:`ModelError` saying what to do."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}; check the path")
    if p.is_dir():
        raise ModelError(f"{p} is a directory; pass the path of an .onnx file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc.strerror}") from exc
    if not data:
        raise ModelError(f"{p} is empty; pass a valid .onnx file")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{p} is not a valid ONNX model (protobuf parse failed: {exc}); is the file truncated or not an .onnx file?") from exc
    if proto.ir_version <= 0 or not proto.HasField("graph") or not (len(proto.graph.node) or len(proto.graph.output)):
        raise ModelError(f"{p} does not contain an ONNX graph; pass a model exported to .onnx")
    # every reference (sparse and attribute tensors too) must be a file inside the model's folder
    files = check_external_data(proto, p)
    lazy = 0
    if files and sum(f.stat().st_size for f in files) >= lazy_weights.threshold():
        # big weights stay in their (checked) files; passes read them one tensor at a time
        lazy = load_remaining_external_data(proto, p, lazy_min_bytes=min(lazy_weights.MIN_TENSOR_BYTES, lazy_weights.threshold()))
    elif files:
        try:
            external_data_helper.load_external_data_for_model(proto, str(p.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelError(f"cannot read external data of {p}: {describe_exception(exc)}") from exc
        # ONNX's loader skips sparse tensors; ONNX Runtime would resolve them against the CWD
        load_remaining_external_data(proto, p)
    validate_model(proto, str(p))
    return LoadedModel(proto=proto, path=p, sha256=sha256_of_files([p, *files]), external_data_files=files, lazy_bytes=lazy)


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def ensure_not_input(out: Path, protected: Iterable[Path]) -> None:
    """Refuse an output path that would overwrite one of the input files."""
    for inp in protected:
        if same_file(out, inp):
            raise UsageError(f"output {out} is the input file {inp}; choose another -o path (the input is never overwritten)")


@contextmanager
def atomic_outputs(directory: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``directory``; files moved out by :func:`commit` land atomically.

    The folder and anything left in it are removed on exit, so a failure leaves nothing behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converter-tmp-", dir=directory))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit(staged: Path, final: Path) -> None:
    """Rename one staged file onto its final path (atomic on one file system)."""
    os.replace(staged, final)


def serialized_size(proto: onnx.ModelProto) -> int:
    return proto.ByteSize()


def write_model(proto: onnx.ModelProto, path: Path, *, external_data: bool | None = None) -> list[Path]:
    """Write ``proto`` to ``path`` (not atomic by itself: call it inside :func:`atomic_outputs`).

    ``external_data=None`` keeps weights inline unless the model is too big for one protobuf; a model
    with lazy weights always writes them external, copied file to file.
    Returns every file written. The in-memory ``proto`` is left untouched.
    """
    if lazy_weights.has_lazy(proto):
        return lazy_weights.write_external(proto, path)
    if external_data is None:
        external_data = serialized_size(proto) >= PROTOBUF_LIMIT
    if not external_data:
        onnx.save_model(proto, str(path))
        return [path]
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    location = path.name + ".data"
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=1024)
    written = [path]
    if (path.parent / location).exists():
        written.append(path.parent / location)
    return written


def save_model(
    proto: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    protect: Iterable[Path] = (),
) -> list[Path]:
    """Save atomically: stage in a temp folder beside ``path``, then rename each file into place."""
    final = Path(path)
    protected = list(protect)
    ensure_not_input(final, protected)
    ensure_not_input(final.parent / (final.name + ".data"), protected)
    with atomic_outputs(final.parent) as tmp:
        staged = write_model(proto, tmp / final.name, external_data=external_data)
        # data files first, the model last: a reader never sees a model whose data is missing
        targets = [final.parent / s.name for s in staged]
        for s, t in sorted(zip(staged, targets), key=lambda st: st[0] == tmp / final.name):
            commit(s, t)
    return targets
