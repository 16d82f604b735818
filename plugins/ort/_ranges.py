"""The calibrated ranges the ``qdq`` pass leaves in the model, read as uint8 quantization parameters.

Contract (written by ``qdq``): ``metadata_props`` key :data:`RANGES_KEY`, a JSON value
``{"format": 1, "calibrator": "...", "ranges": {"<tensor>": {"min": f, "max": f, "amax": f}}}``
for the float activations of the main graph that calibration observed. ``min``/``max``
are the extremes seen, ``amax`` the calibrator's symmetric clip. A tensor not in the map
has no known range, and the lowering gives it no new Q/DQ pair.

The pairs this lowering adds are uint8 and asymmetric (ORT's CPU kernels take any zero
point; the canonical graph TensorRT reads is not touched): over ``[lo, hi]`` with
``lo = min(0, max(min, -amax))``, ``hi = max(0, min(max, amax))``, i.e. the observed range
clipped where the calibrator clips, cut to the values its readers tell apart (``_windows``:
below -3 HardSwish gives 0 whatever the value), widened to hold 0 so that zero (padding)
is exact.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import onnx

RANGES_KEY = "converter.qdq.activation_ranges"
FORMAT = 1
LEVELS = 255


class RangesError(ValueError):
    """The model's ranges metadata is there but is not the contract's JSON."""


@dataclass(frozen=True)
class ActivationRange:
    min: float
    max: float
    amax: float

    def uint8(self, non_negative: bool = False, upper: float | None = None, window: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, int] | None:
        """(scale, zero point) of a uint8 pair over this range, or None where the range is empty.

        ``non_negative``: the tensor is >= 0 by construction (after Relu): zero point 0, so ORT
        drops the Relu. ``upper``: a Clip's max the range must not pass (so ORT drops the Clip).
        ``window``: the values the tensor's readers tell apart (``_windows``); the range is cut to it.
        """
        lo = 0.0 if non_negative else min(0.0, max(self.min, -self.amax, window[0]))
        hi = max(0.0, min(self.max, self.amax, window[1]))
        if upper is not None:
            hi = min(hi, upper)
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo <= 0.0:
            return None
        scale = (hi - lo) / LEVELS
        zero_point = min(LEVELS, max(0, round(-lo / scale)))
        return scale, zero_point


def _entry(name: str, value: object) -> ActivationRange | None:
    if not isinstance(value, dict):
        raise RangesError(f"{RANGES_KEY}: the range of '{name}' is not an object")
    try:
        r = ActivationRange(float(value["min"]), float(value["max"]), float(value["amax"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RangesError(f"{RANGES_KEY}: the range of '{name}' needs numbers min, max and amax ({exc})") from exc
    if not all(math.isfinite(v) for v in (r.min, r.max, r.amax)) or r.min > r.max or r.amax < 0.0:
        return None  # nothing usable was observed: the tensor gets no pair
    return r


def activation_ranges(model: onnx.ModelProto) -> dict[str, ActivationRange]:
    """The ranges the model carries by tensor name; empty when it carries none. Raises :class:`RangesError` on malformed metadata."""
    text = next((p.value for p in model.metadata_props if p.key == RANGES_KEY), None)
    if text is None:
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RangesError(f"{RANGES_KEY} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("ranges"), dict):
        raise RangesError(f"{RANGES_KEY} must be an object with format {FORMAT} and a 'ranges' object")
    out = {}
    for name, value in doc["ranges"].items():
        r = _entry(name, value)
        if r is not None:
            out[name] = r
    return out
