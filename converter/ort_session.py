"""Make an ONNX Runtime session from an in-memory model, big or small."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from converter import lazy_weights
from converter.onnx_calls import model_source


def session_options(threads: int = 0, opt_level: str = "all", log_severity: int = 4) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = log_severity
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    return so


def make_session(
    model: onnx.ModelProto,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    options: ort.SessionOptions | None = None,
    provider_options: Sequence[dict[str, str]] | None = None,
) -> ort.InferenceSession:
    """A session on ``model``; models past protobuf's 2 GiB go through a temporary file with external data.

    Lazy weights (:mod:`converter.lazy_weights`) are read by ONNX Runtime itself from the model's
    folder, memory-mapped, without pre-packing (which would copy every MatMul weight): memory stays the
    weights' size, shared with the page cache, whatever ``options`` say. Keep one such session alive
    at a time: each maps the weights anew.
    """
    so = options or session_options()
    weights = lazy_weights.folder(model)
    if weights is not None:
        model = lazy_weights.for_onnx(model, relative_to=weights)
        so.add_session_config_entry("session.disable_prepacking", "1")
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", weights)
    with model_source(model, "converter-ort-") as src:
        return ort.InferenceSession(src, sess_options=so, providers=list(providers), provider_options=list(provider_options) if provider_options else None)


def run_session(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
