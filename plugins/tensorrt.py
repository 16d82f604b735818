"""The TensorRT backend: availability and registration.

TensorRT and cuda-python are imported lazily, only here, so the tool starts
without them. Engine building (optimization profiles, timing cache, manifest)
is the subject of its own issue; until it lands, ``emit`` says so plainly.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import onnx

from converter.backend_api import Artifact, Availability, Backend, EmitContext, Runner
from converter.errors import BackendError
from converter.hookspecs import hookimpl
from converter.registry import BackendRegistry


@dataclass(frozen=True)
class TensorRTOptions:
    workspace_mib: int = field(default=4096, metadata={"help": "builder workspace limit in MiB"})


def _cuda_device_count() -> tuple[int, str]:
    """Number of CUDA devices via cuda-python, and an error text when it cannot tell."""
    for modname in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            cudart = importlib.import_module(modname)
        except ImportError:
            continue
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0:
            return 0, f"CUDA runtime error {int(err)}"
        return int(count), ""
    return 0, "cuda-python is not installed (pip install cuda-python)"


class TensorRTBackend(Backend[TensorRTOptions]):
    name = "tensorrt"
    summary = "TensorRT engine with optimization profiles (needs tensorrt, cuda-python and an NVIDIA GPU)."
    Options = TensorRTOptions
    suffix = ".engine"

    @classmethod
    def availability(cls) -> Availability:
        try:
            trt = importlib.import_module("tensorrt")
        except ImportError:
            return Availability(False, "tensorrt is not installed (it needs an NVIDIA GPU machine: pip install 'converter[tensorrt]')")
        except Exception as exc:  # a broken install (missing libnvinfer) must not take the tool down
            return Availability(False, f"tensorrt cannot be imported: {type(exc).__name__}: {exc}")
        count, why = _cuda_device_count()
        if count == 0:
            return Availability(False, f"no CUDA device ({why})" if why else "no CUDA device", {"tensorrt": str(trt.__version__)})
        return Availability(True, "", {"tensorrt": str(trt.__version__), "cuda_devices": str(count)})

    def emit(self, model: onnx.ModelProto, ctx: EmitContext) -> Artifact:
        raise BackendError("building TensorRT engines is not implemented in this version; use -b onnx and trtexec on the target machine")

    def load(self, artifact: Artifact) -> Runner:
        raise BackendError("running TensorRT engines is not implemented in this version")


@hookimpl
def converter_register_backends(registry: BackendRegistry) -> None:
    registry.add(TensorRTBackend)
