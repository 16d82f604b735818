"""Calling ONNX's and ONNX Runtime's C APIs on models of any size.

Protobuf cannot serialize a message of 2 GiB or more, so a C API that takes a
serialized model fails on big ones. :func:`model_source` is the one place that
knows the workaround: small models go as bytes, big ones through a temporary
file with external data (removed afterwards). Every "run onnx on a model" helper
below builds on it. A model with lazy weights (:mod:`converter.lazy_weights`) is
small in memory whatever its weights weigh: it goes as bytes, without the private
key, and the checker sees it as a file beside empty placeholders of its data files
(the checker only asks that they exist; it reads no weight).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from converter import lazy_weights
from converter.model_io import PROTOBUF_LIMIT, write_model


@contextmanager
def model_source(model: onnx.ModelProto, prefix: str = "converter-") -> Iterator[bytes | str]:
    """The model as serialized bytes, or (past 2 GiB) as the path of a temporary file with external data."""
    model = lazy_weights.for_onnx(model)
    if model.ByteSize() < PROTOBUF_LIMIT:
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(tmp) / "model.onnx"
        write_model(model, path, external_data=True)
        yield str(path)


def _check_with_placeholders(model: onnx.ModelProto, full_check: bool) -> None:
    skeleton = lazy_weights.for_onnx(model)
    with tempfile.TemporaryDirectory(prefix="converter-check-") as tmp:
        root = Path(tmp)
        for t in skeleton.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                location = next(e.value for e in t.external_data if e.key == "location")
                placeholder = root / location  # checked at load: relative, inside the model's folder
                placeholder.parent.mkdir(parents=True, exist_ok=True)
                placeholder.touch()
        onnx.save_model(skeleton, str(root / "model.onnx"))
        onnx.checker.check_model(str(root / "model.onnx"), full_check=full_check)


def check_model(model: onnx.ModelProto, *, full_check: bool = True) -> None:
    """The ONNX checker (with strict shape inference when ``full_check``); raises onnx's errors."""
    if lazy_weights.has_lazy(model):
        _check_with_placeholders(model, full_check)
        return
    if model.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(model, full_check=full_check)
        return
    with model_source(model, "converter-check-") as src:
        onnx.checker.check_model(str(src), full_check=full_check)


def infer_shapes(model: onnx.ModelProto, *, check_type: bool, strict_mode: bool, data_prop: bool) -> onnx.ModelProto:
    """ONNX shape inference on a model of any size; returns the annotated model (lazy weights stay lazy)."""
    if model.ByteSize() < PROTOBUF_LIMIT:
        return onnx.shape_inference.infer_shapes(model, check_type=check_type, strict_mode=strict_mode, data_prop=data_prop)
    with model_source(model, "converter-shapes-") as src:
        dst = str(Path(str(src)).with_name("inferred.onnx"))
        onnx.shape_inference.infer_shapes_path(str(src), dst, check_type=check_type, strict_mode=strict_mode, data_prop=data_prop)
        return onnx.load(dst)
