"""ONNX Runtime's symbolic shape inference, called so that it leaves nothing behind."""

from __future__ import annotations

import contextlib
import tempfile

import onnx


def symbolic_infer(model: onnx.ModelProto, auto_merge: bool) -> onnx.ModelProto:
    """Run ORT's symbolic shape inference; raises on failure.

    On incomplete inference ORT saves ``sym_shape_infer_temp.onnx`` into the current folder
    before raising: it runs inside a temporary folder so the user's folder stays clean.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 7:  # ORT would log "Only support models of onnx opset 7 and above." on stderr and return None
        raise RuntimeError("symbolic shape inference needs opset 7 or later")
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    with tempfile.TemporaryDirectory(prefix="converter-symbolic-") as tmp, contextlib.chdir(tmp):
        out = SymbolicShapeInference.infer_shapes(model, int_max=2**31 - 1, auto_merge=auto_merge, guess_output_rank=False, verbose=0)
    if out is None:
        raise RuntimeError("symbolic shape inference needs opset 7 or later")
    return out
