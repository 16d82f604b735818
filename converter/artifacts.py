"""Shared pieces of backends: manifests, and opening an artifact from disk."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from converter.version import __version__
from converter.backend_api import Artifact, Runner, manifest_path_for
from converter.errors import UsageError
from converter.model_io import sha256_of_files


def base_manifest_fields(backend: str, files: Sequence[Path], *, source_sha256: str, pipeline: str) -> dict[str, Any]:
    """What every artifact manifest records: backend, versions, provenance, hash."""
    return {
        "backend": backend,
        "converter_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source_model_sha256": source_sha256,
        "pipeline": pipeline,
        "artifact_sha256": sha256_of_files(files),
        "artifact_files": [Path(f).name for f in files],
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


def verify_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The manifest must describe the files beside it: their sha256 is what it recorded.

    The commit renames the manifest last, so a run killed between the renames leaves an
    artifact whose manifest is older; that pair is refused here rather than trusted.
    """
    recorded = manifest.get("artifact_sha256")
    if not recorded:
        return
    names = manifest.get("artifact_files") or [path.name]
    files = [path.parent / str(n) for n in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UsageError(f"{manifest_path_for(path)} lists files that are missing: {', '.join(missing)}; rerun convert")
    if sha256_of_files(files) != recorded:
        raise UsageError(f"{manifest_path_for(path)} does not match {path} (its sha256 differs: an interrupted or concurrent write?); rerun convert")


def artifact_from_disk(path: Path, backend: str | None = None) -> Artifact:
    """An emitted artifact: its manifest names the backend; a bare .onnx defaults to the ort backend."""
    if not path.exists():
        raise UsageError(f"artifact not found: {path}")
    manifest = read_manifest(path) or {}
    verify_manifest(path, manifest)
    name = backend or manifest.get("backend") or ("ort" if path.suffix == ".onnx" else None)
    if name is None:
        raise UsageError(f"{path} has no manifest beside it; say which backend made it with --backend")
    return Artifact(backend=name, path=path, manifest=manifest, files=[path])
