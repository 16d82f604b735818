"""Shared pieces of backends: manifests, ONNX Runtime runners, opening an artifact from disk."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from converter import __version__
from converter.backend_api import Artifact, Runner, TensorSpec, manifest_path_for
from converter.errors import BackendError, UsageError
from converter.feeds import check_feeds
from converter.model_io import sha256_of_files

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

    def __init__(self, path: Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 0, provider_options: Sequence[dict[str, str]] | None = None) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=list(providers), provider_options=list(provider_options) if provider_options else None)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime cannot load {path}: {' '.join(str(exc).split())[:300]}") from exc
        self.inputs = ort_specs(self.session.get_inputs())
        self.outputs = ort_specs(self.session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(feeds, self.inputs)
        names = [o.name for o in self.outputs]
        try:
            return dict(zip(names, self.session.run(names, feeds)))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed to run the artifact: {' '.join(str(exc).split())[:300]}") from exc


def base_manifest_fields(backend: str, files: Sequence[Path], *, source_sha256: str, pipeline: str) -> dict[str, Any]:
    """What every artifact manifest records: backend, versions, provenance, hash."""
    return {
        "backend": backend,
        "converter_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source_model_sha256": source_sha256,
        "pipeline": pipeline,
        "artifact_sha256": sha256_of_files(files),
    }


def base_manifest(backend: str, files: Sequence[Path], runner: Runner, *, source_sha256: str, pipeline: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        **base_manifest_fields(backend, files, source_sha256=source_sha256, pipeline=pipeline),
        "inputs": [s.to_json() for s in runner.inputs],
        "outputs": [s.to_json() for s in runner.outputs],
        **extra,
    }


def read_manifest(path: Path) -> dict[str, Any] | None:
    mp = manifest_path_for(path)
    if not mp.is_file():
        return None
    try:
        data = json.loads(mp.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read the artifact manifest {mp}: {exc}") from exc
    if not isinstance(data, dict) or "backend" not in data:
        raise UsageError(f"{mp} is not an artifact manifest (no 'backend' key)")
    return data


def artifact_from_disk(path: Path, backend: str | None = None) -> Artifact:
    """An emitted artifact: its manifest names the backend; a bare .onnx defaults to the ort backend."""
    if not path.exists():
        raise UsageError(f"artifact not found: {path}")
    manifest = read_manifest(path) or {}
    name = backend or manifest.get("backend") or ("ort" if path.suffix == ".onnx" else None)
    if name is None:
        raise UsageError(f"{path} has no manifest beside it; say which backend made it with --backend")
    return Artifact(backend=name, path=path, manifest=manifest, files=[path])
