"""The TensorRT backend: engines with optimization profiles; precision comes from the graph.

TensorRT and cuda-python are imported lazily (only when building or running), so
the tool starts without them and ``-b tensorrt`` explains why it is unavailable.
The TensorRT-touching code is thin (``tensorrt_build``, ``tensorrt_runner``); the
logic (profiles, lint, manifest) is pure and tested without a GPU.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converter.artifacts import base_manifest_fields
from converter.backend_api import Artifact, Availability, Backend, EmitContext, Finding, Runner
from converter.errors import BackendError
from converter.graph_info import graph_inputs, graph_outputs
from converter.model_io import write_model
from converter.options import bounded
from converter.plugins.tensorrt._profiles import Profile, build_profiles, profiles_to_json

SUPPORTED_MAJORS = (10, 11)


@dataclass(frozen=True)
class TensorRTOptions:
    min_shapes: str | None = field(default=None, metadata={"help": "trtexec-style min shapes, x:1x3x224x224,y:...; ';' separates profiles"})
    opt_shapes: str | None = field(default=None, metadata={"help": "opt shapes, same syntax as min_shapes"})
    max_shapes: str | None = field(default=None, metadata={"help": "max shapes, same syntax as min_shapes"})
    batch: str | None = field(default=None, metadata={"help": "MIN..OPT..MAX for models whose only dynamic dim is the batch (default 1..8..32)"})
    workspace_mib: int | None = field(default=None, metadata=bounded(1, 1 << 24, "builder workspace limit in MiB (default: TensorRT's, the device memory)"))
    opt_level: int | None = field(default=None, metadata=bounded(0, 5, "builder optimization level 0-5 (default: TensorRT's, 3)"))
    timing_cache: str | None = field(default=None, metadata={"help": "timing cache file to load and update (one from another version or GPU is ignored with a warning)"})
    strongly_typed: bool = field(default=True, metadata={"help": "TensorRT 10: strongly typed network (precision from the graph); TensorRT 11 always is"})
    device: int = field(default=0, metadata=bounded(0, 1023, "CUDA device index"))
    target_version: str | None = field(default=None, metadata={"help": "'convert check': lint for this TensorRT version, e.g. 10.8 (default: the installed one, else the newest documented)"})

    def __post_init__(self) -> None:
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise ValueError("opt_level must be between 0 and 5")
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise ValueError("workspace_mib must be positive")
        if self.target_version is not None:
            from converter.plugins.tensorrt.lint import parse_trt_version

            parse_trt_version(self.target_version)  # ValueError names the bad text


def _cuda_device_count() -> tuple[int, str]:
    """Number of CUDA devices via cuda-python, and why there are none."""
    for modname in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            cudart = importlib.import_module(modname)
        except ImportError:
            continue
        except Exception as exc:  # a broken cuda-python install: report, don't crash the listing
            return 0, f"cuda-python cannot be imported: {type(exc).__name__}: {exc}"
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0:
            return 0, f"CUDA runtime: {getattr(err, 'name', err)}"
        return int(count), ""
    return 0, "cuda-python is not installed (pip install cuda-python)"


def _import_tensorrt() -> tuple[Any, str]:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return None, "tensorrt is not installed (it needs an NVIDIA GPU machine: pip install 'converter[tensorrt]')"
    except Exception as exc:  # e.g. libnvinfer missing: the listing must still work
        return None, f"tensorrt cannot be imported: {type(exc).__name__}: {exc}"
    if not hasattr(trt, "Builder"):  # only type stubs (tensorrt-stubs) on the path
        return None, "tensorrt is not installed (only its type stubs were found)"
    return trt, ""


def engine_manifest(
    model: onnx.ModelProto,
    engine: Path,
    profiles: list[Profile],
    options: TensorRTOptions,
    ctx: EmitContext,
    *,
    tensorrt_version: str,
    device: dict[str, str],
) -> dict[str, Any]:
    """The manifest beside an engine: versions, GPU, profiles, I/O specs, provenance."""
    return {
        **base_manifest_fields("tensorrt", [engine], source_sha256=ctx.source_sha256, pipeline=ctx.pipeline),
        "tensorrt_version": tensorrt_version,
        "gpu": device.get("gpu", ""),
        "compute_capability": device.get("compute_capability", ""),
        "device": options.device,
        "profiles": profiles_to_json(profiles),
        "inputs": [s.to_json() for s in graph_inputs(model)],
        "outputs": [s.to_json() for s in graph_outputs(model)],
        "settings": {"workspace_mib": options.workspace_mib, "opt_level": options.opt_level, "strongly_typed": options.strongly_typed, "timing_cache": options.timing_cache},
    }


class TensorRTBackend(Backend[TensorRTOptions]):
    name = "tensorrt"
    summary = "TensorRT engine with optimization profiles; precision from the graph (fp16 casts, Q/DQ)."
    Options = TensorRTOptions
    suffix = ".engine"

    @classmethod
    def availability(cls) -> Availability:
        trt, why = _import_tensorrt()
        if trt is None:
            return Availability(False, why)
        version = str(trt.__version__)
        major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
        if major not in SUPPORTED_MAJORS:
            return Availability(False, f"tensorrt {version} is not supported (need {' or '.join(map(str, SUPPORTED_MAJORS))}.x)", {"tensorrt": version})
        count, why = _cuda_device_count()
        if count == 0:
            return Availability(False, f"no CUDA device ({why})" if why else "no CUDA device", {"tensorrt": version})
        return Availability(True, "", {"tensorrt": version, "cuda_devices": str(count)})

    def lint(self, model: onnx.ModelProto) -> list[Finding]:
        from converter.plugins.tensorrt.lint import lint

        version = self.options.target_version
        if version is None:
            trt, _ = _import_tensorrt()
            version = None if trt is None else str(trt.__version__)
        return lint(model, trt_version=version)

    def profiles(self, model: onnx.ModelProto) -> list[Profile]:
        o = self.options
        return build_profiles(graph_inputs(model), min_shapes=o.min_shapes, opt_shapes=o.opt_shapes, max_shapes=o.max_shapes, batch=o.batch)

    def emit(self, model: onnx.ModelProto, ctx: EmitContext) -> Artifact:
        import tensorrt as trt

        from converter.plugins.tensorrt._build import BuildSettings, build_engine, device_facts

        o = self.options
        profiles = self.profiles(model)
        onnx_dir = ctx.staging / ".onnx"
        onnx_dir.mkdir()
        write_model(model, onnx_dir / "model.onnx")
        settings = BuildSettings(o.workspace_mib, o.opt_level, o.strongly_typed, None if o.timing_cache is None else Path(o.timing_cache))
        engine = build_engine(onnx_dir / "model.onnx", profiles, settings, ctx.log)
        for f in onnx_dir.iterdir():
            f.unlink()
        onnx_dir.rmdir()
        out = ctx.staging / ctx.file_name
        out.write_bytes(engine)
        manifest = engine_manifest(model, out, profiles, o, ctx, tensorrt_version=str(trt.__version__), device=device_facts(o.device))
        return Artifact(self.name, out, manifest, [out])

    def load(self, artifact: Artifact) -> Runner:
        from converter.plugins.tensorrt._runner import TensorRTRunner

        if not artifact.path.is_file():
            raise BackendError(f"engine not found: {artifact.path}")
        return TensorRTRunner(artifact.path, int(artifact.manifest.get("device", self.options.device)))

