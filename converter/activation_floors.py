"""The least value a tensor can take, known from the op that makes it, and the uint8 grid that follows from it.

The canonical pair after a HardSwish spans [-amax, amax], but HardSwish never goes below -0.375: half the int8
grid holds values that cannot occur. A uint8 pair over [-0.375, amax] has up to twice as fine steps and clips
nothing the symmetric pair would not (its top is the same amax; its bottom is a bound of the function, not of the
calibration data). The ORT lowering gives canonical pairs that grid (``plugins/ort/_lowering.py``).

Measured (``bench/bench_quant_models.py`` data, cosine to fp32): PP-LCNet 0.916 -> 0.987 (percentile, the default),
0.957 -> 0.976 (entropy); YOLOv8n 0.99924 -> 0.99914; on other PP-LCNet photos 0.9924 -> 0.9965 (percentile) but
0.9956 -> 0.9868 (entropy). qdq's bias correction is measured on the int8 grid; measuring it on this grid as well
and giving the lowering those biases was tried: better in 5 of 7 such comparisons, worse in both with the default
calibrator on PP-LCNet (0.9867 -> 0.9815, 0.9965 -> 0.9951), so it was left out.

Floors (x any real):

- Relu, Clip with a constant min >= 0, Sigmoid, HardSigmoid, Softmax, Abs, Exp: 0 (Clip: its min);
- ``HardSwish(x) = x * relu6(x + 3) / 6 >= -3/8`` (at x = -3/2);
- ``x * HardSigmoid(x; alpha, beta)``: ``-beta^2 / (4 alpha)`` (HardSwish: alpha 1/6, beta 1/2);
- SiLU, ``x * Sigmoid(x) >= -0.27846454`` (at x = -1.27846);
- HardSwish written out, ``x * Clip(x + c, 0, h) * k`` (k > 0 the product of the positive constant factors
  between the Clip and the closing Mul, c > 0, h >= c / 2): ``-k c^2 / 4``;
- a positive constant scaling (Mul/Div) of a tensor with a floor: the floor scaled;
- a constant shift (Add/Sub of a scalar) of a tensor with a floor: the floor shifted (PP-LCNetV3's learnable affine
  blocks, ``A HardSwish(x) + B``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from converter import lazy_weights

SILU_FLOOR = -0.27846454276
NON_NEGATIVE = ("Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs", "Exp")
LEVELS = 255


@dataclass
class GraphView:
    """Producers and constant values of one graph's tensors."""

    producer: dict[str, onnx.NodeProto]
    constants: dict[str, onnx.TensorProto]

    @classmethod
    def of(cls, g: onnx.GraphProto) -> GraphView:
        constants = {t.name: t for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.output:
                value = next((a.t for a in n.attribute if a.name == "value"), None)
                if value is not None:
                    constants[n.output[0]] = value
        return cls({o: n for n in g.node for o in n.output if o}, constants)

    def scalar(self, name: str) -> float | None:
        t = self.constants.get(name) if name else None
        if t is None or lazy_weights.nbytes(t) > 64:
            return None
        v = lazy_weights.to_array(t)
        return float(v.reshape(())) if v.size == 1 else None


def _default(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((float(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == name), default)


def clip_bounds(node: onnx.NodeProto, view: GraphView) -> tuple[float, float] | None:
    """(min, max) of a Clip with constant bounds (-inf/inf where absent), or None."""
    if len(node.input) > 1:
        low = view.scalar(node.input[1]) if node.input[1] else -math.inf
        high = view.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else math.inf
        return None if low is None or high is None else (low, high)
    return _attr(node, "min", -math.inf), _attr(node, "max", math.inf)


def positive_factor(node: onnx.NodeProto, x: str, view: GraphView) -> float | None:
    """The positive factor a constant Mul/Div applies to ``x``, or None."""
    if not _default(node) or node.op_type not in ("Mul", "Div") or len(node.input) != 2 or x not in node.input:
        return None
    if node.op_type == "Div" and node.input[0] != x:
        return None
    value = view.scalar(node.input[1] if node.input[0] == x else node.input[0])
    if value is None or value <= 0.0:
        return None
    return value if node.op_type == "Mul" else 1.0 / value


def hard_sigmoid_product_floor(alpha: float, beta: float) -> float | None:
    """The least value of ``x * HardSigmoid(x; alpha, beta)``, or None where its vertex is not inside the ramp."""
    if alpha <= 0.0 or not 0.0 < beta < 1.0:
        return None
    return -beta * beta / (4.0 * alpha)  # x (alpha x + beta) at its vertex -beta / (2 alpha), inside the ramp



def _written_out_floor(x: str, gate: str, view: GraphView) -> float | None:
    """``-k c^2 / 4`` when ``gate`` is ``Clip(Add(x, c), 0, h)`` scaled by positive constants (product k)."""
    k, node = 1.0, view.producer.get(gate)
    while node is not None and node.op_type in ("Mul", "Div"):
        source = node.input[0] if node.op_type == "Div" or view.scalar(node.input[1]) is not None else node.input[1]
        factor = positive_factor(node, source, view)
        if factor is None:
            return None
        k, node = k * factor, view.producer.get(source)
    if node is None or node.op_type != "Clip" or not _default(node):
        return None
    bounds = clip_bounds(node, view)
    add = view.producer.get(node.input[0])
    if bounds is None or bounds[0] != 0.0 or add is None or add.op_type != "Add" or len(add.input) != 2 or x not in add.input:
        return None
    c = view.scalar(add.input[1] if add.input[0] == x else add.input[0])
    if c is None or c <= 0.0 or bounds[1] < c / 2.0:
        return None
    return -k * c * c / 4.0


def _product_floor(node: onnx.NodeProto, view: GraphView) -> float | None:
    """The floor of ``Mul(x, gate(x))`` for the gates above."""
    a, b = node.input[0], node.input[1]
    for x, gate in ((a, b), (b, a)):
        p = view.producer.get(gate)
        if p is None or not _default(p):
            continue
        if p.op_type == "Sigmoid" and p.input[0] == x:
            return SILU_FLOOR
        if p.op_type == "HardSigmoid" and p.input[0] == x:
            return hard_sigmoid_product_floor(_attr(p, "alpha", 0.2), _attr(p, "beta", 0.5))
        found = _written_out_floor(x, gate, view)
        if found is not None:
            return found
    return None


def floor_of(tensor: str, view: GraphView, depth: int = 4) -> float | None:
    """The least value ``tensor`` can take by construction, or None when that is not known."""
    node = view.producer.get(tensor)
    if node is None or not _default(node) or depth <= 0:
        return None
    if node.op_type in NON_NEGATIVE:
        return 0.0
    if node.op_type == "Clip":
        bounds = clip_bounds(node, view)
        return bounds[0] if bounds is not None and bounds[0] >= 0.0 else None
    if node.op_type == "HardSwish":
        return -0.375
    if node.op_type == "Mul" and len(node.input) == 2:
        found = _product_floor(node, view)
        if found is not None:
            return found
    if node.op_type in ("Add", "Sub") and len(node.input) == 2:  # a constant shift: the floor shifted
        for x, c in ((node.input[0], node.input[1]), *([(node.input[1], node.input[0])] if node.op_type == "Add" else [])):
            shift, below = view.scalar(c), None
            if shift is not None and math.isfinite(shift):
                below = floor_of(x, view, depth - 1)
            if below is not None and shift is not None:
                return below + shift if node.op_type == "Add" else below - shift
    if node.op_type in ("Mul", "Div") and len(node.input) == 2:
        for x in node.input[: 1 if node.op_type == "Div" else 2]:
            factor = positive_factor(node, x, view)
            below = floor_of(x, view, depth - 1) if factor is not None else None
            if below is not None and factor is not None:
                return below * factor
    return None


def uint8_over(floor: float, amax: float) -> tuple[float, int] | None:
    """(scale, zero point) of a uint8 pair over [floor, amax] (floor <= 0 < amax), or None where it is not finer than
    the symmetric grid's (a floor at or below -amax)."""
    if not (math.isfinite(floor) and math.isfinite(amax)) or amax <= 0.0 or floor > 0.0 or -floor >= amax:
        return None
    scale = (amax - floor) / LEVELS
    return scale, min(LEVELS, max(0, round(-floor / scale)))


def uint8_grid(tensor: str, view: GraphView, amax: float) -> tuple[float, int, float] | None:
    """The uint8 grid the ORT lowering gives a symmetric pair of ``tensor`` (scale amax/127): (scale, zero point, floor)
    over [0, amax] where the tensor is non-negative, over [floor, amax] where it has a floor above -amax; None where
    it keeps the symmetric grid (as uint8 with zero point 128)."""
    floor = floor_of(tensor, view)
    if floor is None:
        return None
    if floor >= 0.0:
        return float(np.float32(amax / LEVELS)), 0, 0.0
    over = uint8_over(floor, amax)
    return (over[0], over[1], floor) if over is not None else None
