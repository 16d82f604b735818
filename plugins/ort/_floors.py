"""The least value a tensor can take, known from the op that makes it, not from calibration.

The canonical pair after a HardSwish spans [-amax, amax], but HardSwish never goes below -0.375: half the
int8 grid holds values that cannot occur. A uint8 pair over [-0.375, amax] has up to twice as fine steps and
clips nothing the symmetric pair would not (its top is the same amax; its bottom is a bound of the function,
not of the calibration data, so data unlike the calibration set cannot fall below it). Measured on PP-LCNet
(HardSwish everywhere): ``bench/bench_quant_models.py``.

Floors (x any real):

- ``HardSwish(x) = x * relu6(x + 3) / 6 >= -3/8`` (at x = -3/2);
- ``x * HardSigmoid(x; alpha, beta)``, with HardSigmoid's ramp from -beta/alpha to (1 - beta)/alpha: its least
  value on the ramp, ``-beta^2 / (4 alpha)`` where that lies on the ramp (HardSwish: alpha 1/6, beta 1/2);
- SiLU, ``x * Sigmoid(x) >= -0.27846454`` (at x = -1.27846);
- HardSwish written out, ``x * Clip(x + c, 0, h) * k`` (k > 0 the product of the positive constant factors
  between the Clip and the closing Mul, c > 0, h >= c / 2): ``-k c^2 / 4``;
- Relu, Sigmoid, HardSigmoid, Softmax, Abs, Exp: 0;
- a positive constant scaling (Mul/Div) of a tensor with a floor: the floor scaled.
"""

from __future__ import annotations

import math

import onnx

from converter.plugins.ort._graph import GraphIndex, attribute, in_default_domain
from converter.plugins.ort._windows import _clip_bounds, _positive_scaling, _scalar

SILU_FLOOR = -0.27846454276
NON_NEGATIVE = ("Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs", "Exp")


def _scale_of(node: onnx.NodeProto, x: str, g: onnx.GraphProto, index: GraphIndex) -> float | None:
    """The factor a positive constant Mul/Div applies to ``x``, or None when ``node`` is not one."""
    if not _positive_scaling(node, x, g, index):
        return None
    other = node.input[1] if node.input[0] == x else node.input[0]
    value = _scalar(g, index, other)
    assert value is not None
    return value if node.op_type == "Mul" else 1.0 / value


def _hard_sigmoid_floor(node: onnx.NodeProto) -> float | None:
    alpha, beta = float(attribute(node, "alpha", 0.2)), float(attribute(node, "beta", 0.5))
    if alpha <= 0.0 or not 0.0 < beta < 1.0:
        return None
    x_min = -beta / (2.0 * alpha)  # the vertex of alpha x^2 + beta x, inside the ramp [-beta/alpha, (1-beta)/alpha] when beta <= 1
    return x_min * (alpha * x_min + beta)


def _written_out_floor(x: str, other: str, g: onnx.GraphProto, index: GraphIndex) -> float | None:
    """``-k c^2 / 4`` when ``other`` is ``Clip(Add(x, c), 0, h)`` scaled by positive constants (product k)."""
    k, node = 1.0, index.producer.get(other)
    while node is not None and node.op_type in ("Mul", "Div"):
        source = node.input[0] if node.op_type == "Div" or index.value(node.input[1]) is not None else node.input[1]
        factor = _scale_of(node, source, g, index)
        if factor is None:
            return None
        k, node = k * factor, index.producer.get(source)
    if node is None or node.op_type != "Clip" or not in_default_domain(node):
        return None
    bounds = _clip_bounds(node, g, index)
    add = index.producer.get(node.input[0])
    if bounds is None or bounds[0] != 0.0 or add is None or add.op_type != "Add" or x not in add.input or len(add.input) != 2:
        return None
    c = _scalar(g, index, add.input[1] if add.input[0] == x else add.input[0])
    if c is None or c <= 0.0 or bounds[1] < c / 2.0:
        return None
    return -k * c * c / 4.0


def _product_floor(node: onnx.NodeProto, g: onnx.GraphProto, index: GraphIndex) -> float | None:
    """The floor of ``Mul(x, f(x))`` for the gates f above."""
    a, b = node.input[0], node.input[1]
    for x, gate in ((a, b), (b, a)):
        p = index.producer.get(gate)
        if p is None or not in_default_domain(p):
            continue
        if p.op_type == "Sigmoid" and p.input[0] == x:
            return SILU_FLOOR
        if p.op_type == "HardSigmoid" and p.input[0] == x:
            return _hard_sigmoid_floor(p)
        found = _written_out_floor(x, gate, g, index)
        if found is not None:
            return found
    return None


def floor_of(tensor: str, g: onnx.GraphProto, index: GraphIndex, depth: int = 4) -> float | None:
    """The least value ``tensor`` can take by construction, or None when that is not known."""
    node = index.producer.get(tensor)
    if node is None or not in_default_domain(node) or depth <= 0:
        return None
    if node.op_type in NON_NEGATIVE:
        return 0.0
    if node.op_type == "HardSwish":
        return -0.375
    if node.op_type == "Mul" and len(node.input) == 2:
        found = _product_floor(node, g, index)
        if found is not None:
            return found
    if node.op_type in ("Mul", "Div") and len(node.input) == 2:
        for x in node.input[: 1 if node.op_type == "Div" else 2]:
            factor = _scale_of(node, x, g, index)
            below = floor_of(x, g, index, depth - 1) if factor is not None else None
            if below is not None and factor is not None:
                return below * factor
    return None


def uint8_over(floor: float, amax: float) -> tuple[float, int] | None:
    """(scale, zero point) of a uint8 pair over [floor, amax] (floor <= 0 < amax), or None where it is not finer than
    the symmetric grid's."""
    if not (math.isfinite(floor) and math.isfinite(amax)) or amax <= 0.0 or floor > 0.0 or -floor >= amax:
        return None
    scale = (amax - floor) / 255.0
    return scale, min(255, max(0, round(-floor / scale)))
