"""Calling ONNX's and ONNX Runtime's C APIs on models of any size.

Protobuf cannot serialize a message of 2 GiB or more, so a C API that takes a
serialized model fails on big ones. :func:`model_source` is the one place that
knows the workaround: small models go as bytes, big ones through a temporary
file with external data (removed afterwards). Every "run onnx on a model" helper
below builds on it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from converter.model_io import PROTOBUF_LIMIT, write_model


@contextmanager
def model_source(model: onnx.ModelProto, prefix: str = "converter-") -> Iterator[bytes | str]:
    """The model as serialized bytes, or (past 2 GiB) as the path of a temporary file with external data."""
    if model.ByteSize() < PROTOBUF_LIMIT:
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(tmp) / "model.onnx"
        write_model(model, path, external_data=True)
        yield str(path)


def check_model(model: onnx.ModelProto, *, full_check: bool = True) -> None:
    """The ONNX checker (with strict shape inference when ``full_check``); raises onnx's errors."""
    if model.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(model, full_check=full_check)
        return
    with model_source(model, "converter-check-") as src:
        onnx.checker.check_model(str(src), full_check=full_check)


def infer_shapes(model: onnx.ModelProto, *, check_type: bool, strict_mode: bool, data_prop: bool) -> onnx.ModelProto:
    """ONNX shape inference on a model of any size; returns the annotated model."""
    if model.ByteSize() < PROTOBUF_LIMIT:
        return onnx.shape_inference.infer_shapes(model, check_type=check_type, strict_mode=strict_mode, data_prop=data_prop)
    with model_source(model, "converter-shapes-") as src:
        dst = str(Path(str(src)).with_name("inferred.onnx"))
        onnx.shape_inference.infer_shapes_path(str(src), dst, check_type=check_type, strict_mode=strict_mode, data_prop=data_prop)
        return onnx.load(dst)
