"""Ranges of every activation, recorded in the model for backends that quantize more than the canonical placement.

The canonical graph quantizes only what TensorRT fuses (layer inputs). ONNX Runtime's CPU kernels
need more: a QuantizeLinear after each quantized Conv (else no QLinearConv) and around the
activations between layers (SiLU, HardSwish, PReLU, Concat, pooling...). Those tensors' ranges are
known only at calibration, so ``qdq`` calibrates every float activation of the main graph in the
same pass over the data and stores them as model metadata (``ACTIVATION_RANGES``), JSON::

    {"format": 1, "calibrator": "entropy", "ranges": {"tensor": {"min": m, "max": M, "amax": a}, ...}}

``amax`` is the calibrator's symmetric clip value, ``min``/``max`` the extremes seen. A backend
reads them (the ``ort`` lowering); the graph itself is unchanged, and tensors not listed have no
known range.
"""

from __future__ import annotations

import json
import math

import onnx

from converter.calibration.cache import TensorRange

ACTIVATION_RANGES = "converter.qdq.activation_ranges"
FORMAT = 1


def activation_tensors(model: onnx.ModelProto, types: dict[str, int]) -> list[str]:
    """Float32 tensors of the main graph that depend on a graph input (constants excluded), in graph order."""
    g = model.graph
    dynamic = {i.name for i in g.input} - {t.name for t in g.initializer}
    out = [name for name in dynamic if types.get(name) == onnx.TensorProto.FLOAT]
    for node in g.node:
        if any(x in dynamic for x in node.input) or (node.attribute and any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)):
            for o in node.output:
                if o:
                    dynamic.add(o)
                    if types.get(o) == onnx.TensorProto.FLOAT:
                        out.append(o)
    return out


def record(model: onnx.ModelProto, ranges: dict[str, TensorRange], amax: dict[str, float], calibrator: str) -> int:
    """Write the ranges into the model's metadata (replacing an earlier record); how many were written."""
    table = {t: {"min": float(r.min), "max": float(r.max), "amax": float(amax.get(t, r.amax))} for t, r in ranges.items()
             if r.min is not None and r.max is not None and math.isfinite(r.min) and math.isfinite(r.max) and r.max >= r.min}  # a TensorRT cache has amax only
    text = json.dumps({"format": FORMAT, "calibrator": calibrator, "ranges": table}, separators=(",", ":"))
    kept = [p for p in model.metadata_props if p.key != ACTIVATION_RANGES]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ACTIVATION_RANGES, value=text)
    return len(table)


def read(model: onnx.ModelProto) -> dict[str, dict[str, float]]:
    """The recorded ranges (empty when the model carries none or another format)."""
    for p in model.metadata_props:
        if p.key == ACTIVATION_RANGES:
            try:
                data = json.loads(p.value)
            except json.JSONDecodeError:
                return {}
            return data.get("ranges", {}) if data.get("format") == FORMAT else {}
    return {}
