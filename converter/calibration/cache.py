"""Calibration cache: tensor ranges saved so calibration runs once per model and data.

Our format is JSON::

    {"format": "converter-calibration-cache", "version": 1,
     "method": "entropy", "model_hash": "<sha256>", "data_hash": "<sha256>", "samples": 64,
     "tensors": {"x": {"amax": 2.64, "min": -2.1, "max": 2.64}, ...}}

It is reused only when method, model hash and data hash all match (the data hash
covers the sample limit too). ``min``/``max`` are the raw range seen, so a backend
can give never-negative tensors a full unsigned range while the graph stays
symmetric.

TensorRT's text format (what ``IInt8EntropyCalibrator2::writeCalibrationCache``
writes and ``trtexec --calib`` reads)::

    TRT-8601-EntropyCalibration2
    input: 3c010a14

one line per tensor: the name, a colon, and the 8 hex digits of the IEEE-754
float32 *scale* (``amax / 127``), most significant byte first. The number after
``TRT-`` is the TensorRT library version (8.6.1 -> 8601; 10.3.0 -> 100300) and
TensorRT rejects a cache written for another version. It carries no hashes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from converter.errors import UsageError

FORMAT = "converter-calibration-cache"
VERSION = 1
_TRT_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


@dataclass(frozen=True)
class TensorRange:
    amax: float
    min: float | None = None
    max: float | None = None


@dataclass
class CalibrationCache:
    method: str
    tensors: dict[str, TensorRange]
    model_hash: str = ""
    data_hash: str = ""
    samples: int = 0
    origin: str = "converter"
    """``converter`` (our JSON) or ``tensorrt`` (imported TensorRT text: no hashes)."""
    header: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def mismatch(self, method: str, model_hash: str, data_hash: str) -> str | None:
        """Why this cache cannot be reused for that calibration (None when it can)."""
        if self.method != method:
            return f"it was made with calibrator {self.method}, not {method}"
        if self.model_hash != model_hash:
            return "the model changed since it was made"
        if self.data_hash != data_hash:
            return "the calibration data (or the sample limit) changed since it was made"
        return None


def model_hash(model: onnx.ModelProto) -> str:
    """sha256 of the graph, part by part (so models past protobuf's 2 GiB hash too; producer fields do not count)."""
    digest = hashlib.sha256()
    g = model.graph
    for part in [*g.input, *g.output, *g.node, *g.initializer, *g.sparse_initializer, *model.opset_import]:
        digest.update(hashlib.sha256(part.SerializeToString(deterministic=True)).digest())
    return digest.hexdigest()


def json_text(cache: CalibrationCache) -> str:
    """Our JSON cache as text (what :func:`save_json` writes)."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "method": cache.method,
        "model_hash": cache.model_hash,
        "data_hash": cache.data_hash,
        "samples": cache.samples,
        "tensors": {k: {"amax": r.amax, "min": r.min, "max": r.max} for k, r in sorted(cache.tensors.items())},
    }
    return json.dumps(doc, indent=1) + "\n"


def save_json(cache: CalibrationCache, path: str | Path) -> None:
    Path(path).write_text(json_text(cache))


def is_our_cache(path: str | Path) -> bool:
    """A calibration cache a run may replace: our JSON format, or TensorRT's text (``TRT-`` header)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return head.startswith(b"TRT-") or f'"format": "{FORMAT}"'.encode() in head


def _range(name: str, value: object, where: Path) -> TensorRange:
    if not isinstance(value, dict) or "amax" not in value:
        raise UsageError(f"calibration cache {where}: entry '{name}' has no amax")
    amax = float(value["amax"])
    if not math.isfinite(amax) or amax < 0:
        raise UsageError(f"calibration cache {where}: entry '{name}' has amax {amax}; it must be finite and >= 0")
    lo, hi = value.get("min"), value.get("max")
    return TensorRange(amax, None if lo is None else float(lo), None if hi is None else float(hi))


def load_json(path: str | Path) -> CalibrationCache:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"calibration cache {p}: not readable JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"calibration cache {p}: not a {FORMAT} file (nor a TensorRT cache starting with TRT-)")
    if doc.get("version") != VERSION:
        raise UsageError(f"calibration cache {p}: version {doc.get('version')} is not {VERSION}; delete it to recalibrate")
    tensors = {str(k): _range(str(k), v, p) for k, v in dict(doc.get("tensors", {})).items()}
    return CalibrationCache(str(doc.get("method", "")), tensors, str(doc.get("model_hash", "")), str(doc.get("data_hash", "")), int(doc.get("samples", 0)))


def trt_version_tag(version: str) -> str:
    """TensorRT's library version number as its caches write it: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0]
    major, minor, patch = parts[:3]
    return str(major * (10000 if major >= 10 else 1000) + minor * 100 + patch)


def to_tensorrt_text(amaxes: dict[str, float], version_tag: str, algorithm: str = "EntropyCalibration2") -> str:
    lines = [f"TRT-{version_tag}-{algorithm}"]
    for name, amax in amaxes.items():
        scale = struct.pack(">f", amax / 127.0)
        lines.append(f"{name}: {scale.hex()}")
    return "\n".join(lines) + "\n"


def export_tensorrt(cache: CalibrationCache, path: str | Path, version_tag: str, algorithm: str = "EntropyCalibration2") -> None:
    Path(path).write_text(to_tensorrt_text({k: r.amax for k, r in cache.tensors.items()}, version_tag, algorithm))


def parse_tensorrt_text(text: str, where: str) -> CalibrationCache:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or not _TRT_HEADER.match(lines[0]):
        raise UsageError(f"{where}: not a TensorRT calibration cache (first line must look like TRT-8601-EntropyCalibration2)")
    tensors: dict[str, TensorRange] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{1,8}", value.strip()):
            raise UsageError(f"{where}: line {number} '{line}' is not 'tensor_name: <8 hex digits>'")
        (scale,) = struct.unpack(">f", bytes.fromhex(value.strip().rjust(8, "0")))
        if not math.isfinite(scale) or scale < 0:
            raise UsageError(f"{where}: line {number}: scale {scale} of '{name}' must be finite and >= 0")
        tensors[name.strip()] = TensorRange(float(scale) * 127.0)
    algorithm = _TRT_HEADER.match(lines[0]).group(2)  # type: ignore[union-attr]
    return CalibrationCache(method=f"tensorrt:{algorithm}", tensors=tensors, origin="tensorrt", header=lines[0])


def import_tensorrt(path: str | Path) -> CalibrationCache:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"calibration cache {p}: not readable ({exc})") from exc
    return parse_tensorrt_text(text, f"calibration cache {p}")


def is_tensorrt_file(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"TRT-"


def load_cache(path: str | Path) -> CalibrationCache:
    """Our JSON cache, or a TensorRT text cache (told apart by its ``TRT-`` header)."""
    return import_tensorrt(path) if is_tensorrt_file(path) else load_json(path)
