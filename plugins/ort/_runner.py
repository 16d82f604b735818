"""Running an .onnx file on ONNX Runtime: the runner of the ``ort`` and ``onnx`` backends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from converter import lazy_weights
from converter.backend_api import Runner, TensorSpec
from converter.errors import BackendError, describe_exception, shorten
from converter.feeds import check_feeds

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool", "tensor(string)": "object",
}


def ort_specs(args: Sequence[Any]) -> list[TensorSpec]:
    return [TensorSpec(a.name, _ORT_TYPES.get(a.type, a.type), tuple(d if isinstance(d, int) else (d or None) for d in (a.shape or []))) for a in args]


class OrtRunner(Runner):
    """Runs an .onnx file on ONNX Runtime."""

    def __init__(self, path: Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 0, provider_options: Sequence[dict[str, str]] | None = None,
                 exact_qdq: bool = False) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 4  # errors are raised (and reported in one line), not logged
        if exact_qdq:  # every Q/DQ computed as written (TensorRT's arithmetic), not fused into ORT's CPU int8 kernels
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        data = Path(path).with_name(Path(path).name + ".data")
        if data.exists() and data.stat().st_size >= lazy_weights.threshold():
            # big weights: ORT maps them from the file; pre-packing would copy every MatMul weight
            so.add_session_config_entry("session.disable_prepacking", "1")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=list(providers), provider_options=list(provider_options) if provider_options else None)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime cannot load the artifact {Path(path).name}: {shorten(str(exc).replace(str(path), Path(path).name))}") from exc
        self.inputs = ort_specs(self.session.get_inputs())
        self.outputs = ort_specs(self.session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.inputs)
        names = [o.name for o in self.outputs]
        try:
            return dict(zip(names, self.session.run(names, feeds)))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed to run the artifact: {describe_exception(exc)}") from exc
