"""HardSwish between quantized tensors as two uint8 ops, QLinearAdd and QLinearMul, with no float pass.

After the chain, a HardSwish often reads a uint8 pair (a fused Conv's output) and writes one (the next Conv's
input): ``DQ(x) -> HardSwish -> Q``. ORT runs that as DequantizeLinear, HardSigmoid, Mul in float and
QuantizeLinear: four passes over the tensor, two of them on float32. The gate ``HardSigmoid(x) = clip(a x + b, 0,
1)`` needs no float op at all: it is ``x + b/a`` quantized with scale ``1/(255 a)`` and zero point 0 (the
QuantizeLinear's saturation to [0, 255] is the clip), then read back with scale ``1/255``::

    DQ(x) -> Add(·, DQ(b/a)) -> Q(scale 1/(255 a), zero point 0) -> DQ(scale 1/255, zero point 0) -> gate

exactly ``HardSigmoid(x)`` rounded to 1/255 steps (0 and 1 on the grid), as ONNX semantics, fused or not. ORT fuses
the Add with its DQs and Q into QLinearAdd (a uint8 requantization with a broadcast constant), and ``x * gate``
into QLinearMul: PP-LCNet at batch 8 went from 14.9 to 10.9 ms of kernel time (the float DequantizeLinear,
HardSigmoid and QuantizeLinear took 6.2 ms). ``x * HardSigmoid(x)`` written as two ops (after ``_hardswish``
collapsed a written-out one) gets its gate the same way, where the Mul's output goes only to QuantizeLinear. A
HardSigmoid with ``b <= 0`` (no uint8 constant holds ``b/a``) keeps a float HardSigmoid with a uint8 pair on its output.

A scalar affine after the HardSwish, ``y = A h + B`` (PP-LCNetV3's learnable affine blocks in PP-OCRv4/v5: a Mul
and an Add by constants after every activation), goes into the same QLinearMul: ``A > 0`` into its reading of ``x``
(a second DequantizeLinear of the same uint8 tensor, scale ``A s``), ``B`` into its output's zero point, ``B = k``
steps of ``y``'s grid: ``Q(A x g; s, z + k)`` read back by ``y``'s ``DQ(s, z)`` is ``A x g + B``. Where ``B`` is not
within ``SHIFT_TOLERANCE`` of whole steps, ``y``'s grid moves to scale ``B / k`` (k = B / s towards zero, at least
``MIN_SHIFT_STEPS``: up to 1 / k coarser, nothing more clipped). A smaller ``B`` is added by a QLinearAdd of a
constant after the QLinearMul, whose output gets a pair of its own. Measured on PP-OCRv4 (32 held-out samples, cosine to
fp32; the affine left float: rec 0.986, det 0.972): rounding every ``B`` to whole steps of ``y``'s grid, rec 0.952;
moving the grid, rec 0.978, det 0.979; with the QLinearAdd for the small ones too (what this does), rec 0.974, det
0.974, and none of the five float ops per block is left: det 1.45x -> 1.71x fp32 at batch 8 (1.09x before this module
took affines), rec 1.2x -> 2.5x.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.activation_floors import hard_sigmoid_product_floor
from converter.graph_edit import replace_repeated, unique_name
from converter.plugins.ort._graph import GraphIndex, attribute, in_default_domain, pair_of, used_names

GATE_SCALE = np.float32(1.0 / 255.0)
SHIFT_TOLERANCE = 0.05
"""How far (in steps of the output's grid) an affine's ``B`` may be from whole steps to go into the zero point as it is."""
MIN_SHIFT_STEPS = 2
"""The fewest whole steps ``B`` may be when the output's grid is moved to hold it (steps up to 1/2 coarser)."""


def _uint8_dq(name: str, index: GraphIndex) -> bool:
    dq = index.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or not in_default_domain(dq) or len(dq.input) != 3:
        return False
    zero = index.value(dq.input[2])
    return zero is not None and zero.dtype == np.uint8 and zero.size == 1


def _into_q(name: str, index: GraphIndex) -> bool:
    readers = index.readers.get(name, [])
    return bool(readers) and name not in index.outputs and all(r.op_type == "QuantizeLinear" and in_default_domain(r) for r in readers)


class _Params:
    """Scalar initializers shared by every gate, added once: the gate's read-back pair and, per HardSigmoid shape, the
    offset constant and the requantization scale."""

    def __init__(self, g: onnx.GraphProto, used: set[str]) -> None:
        self.g, self.used, self.made = g, used, {}

    def _const(self, key: str, value: np.ndarray) -> str:
        name = self.made.get((key, value.dtype.str, value.tobytes()))
        if name is None:
            name = unique_name(f"hardsigmoid_gate_{key}", self.used)
            self.g.initializer.append(numpy_helper.from_array(value, name))
            self.made[(key, value.dtype.str, value.tobytes())] = name
        return name

    def scalar(self, key: str, value: float, dtype: type = np.float32) -> str:
        return self._const(key, np.array(value, dtype))

    def read_back(self) -> tuple[str, str]:
        return self._const("u8_scale", np.array(GATE_SCALE)), self._const("u8_zero_point", np.array(0, np.uint8))

    def offset(self, c: float) -> tuple[str, str, str]:
        """``c > 0`` as a dequantized uint8 constant: (quantized 255, scale c/255, zero point 0)."""
        return (self._const("offset_quantized", np.array(255, np.uint8)), self._const("offset_scale", np.array(c / 255.0, np.float32)),
                self._const("u8_zero_point", np.array(0, np.uint8)))

    def requantize(self, alpha: float) -> tuple[str, str]:
        return self._const("requantize_scale", np.array(1.0 / (255.0 * alpha), np.float32)), self._const("u8_zero_point", np.array(0, np.uint8))


def _gate_nodes(x: str, alpha: float, beta: float, gate: str, used: set[str], params: _Params) -> list[onnx.NodeProto]:
    """Nodes computing ``gate = HardSigmoid(x; alpha, beta)`` on the uint8 grid of 1/255 steps."""
    def new(suffix: str) -> str:
        return unique_name(f"{gate}_{suffix}", used)

    read = params.read_back()
    if beta > 0.0:  # x + beta/alpha, requantized with scale 1/(255 alpha): the saturation is the clip
        off_q, off_s, off_z = params.offset(beta / alpha)
        off, shifted, q = new("offset"), new("shifted"), new("u8_quantized")
        return [helper.make_node("DequantizeLinear", [off_q, off_s, off_z], [off], name=off),
                helper.make_node("Add", [x, off], [shifted], name=shifted),
                helper.make_node("QuantizeLinear", [shifted, *params.requantize(alpha)], [q], name=new("QuantizeLinear")),
                helper.make_node("DequantizeLinear", [q, *read], [gate], name=new("DequantizeLinear"))]
    hs, q = new("hardsigmoid"), new("u8_quantized")
    return [helper.make_node("HardSigmoid", [x], [hs], name=hs, alpha=alpha, beta=beta),
            helper.make_node("QuantizeLinear", [hs, *read], [q], name=new("QuantizeLinear")),
            helper.make_node("DequantizeLinear", [q, *read], [gate], name=new("DequantizeLinear"))]


def _affine_tail(y: str, index: GraphIndex) -> tuple[float, float, list[onnx.NodeProto]] | None:
    """``(A, B, nodes)`` where ``y`` reaches QuantizeLinear readers only through Mul/Add by scalar constants
    (``A y + B``, ``A > 0``); ``(1, 0, [])`` where it goes to QuantizeLinear directly; None otherwise."""
    a, b, nodes = 1.0, 0.0, []
    while not _into_q(y, index):
        readers = index.readers.get(y, [])
        if len(readers) != 1 or y in index.outputs:
            return None
        node = readers[0]
        if node.op_type not in ("Mul", "Add") or not in_default_domain(node) or len(node.input) != 2 or list(node.input).count(y) != 1:
            return None
        c = index.value(node.input[1] if node.input[0] == y else node.input[0])
        if c is None or c.size != 1 or c.ndim > 1 or not np.issubdtype(c.dtype, np.floating) or not np.isfinite(c).all():
            return None  # a scalar of rank 0 or 1: the output keeps y's shape
        v = float(c.reshape(()))
        a, b = (a * v, b * v) if node.op_type == "Mul" else (a, b + v)
        nodes.append(node)
        y = node.output[0]
    return (a, b, nodes) if a > 0.0 and np.isfinite([a, b]).all() else None


def _shifted_grid(q: onnx.NodeProto, b: float, index: GraphIndex) -> tuple[float, int, int] | None:
    """A uint8 grid for ``y`` (quantized by ``q``) on which ``b`` is a whole number of steps k: (scale, zero point of the
    DequantizeLinear readers, zero point of ``q`` = that + k), so that ``Q(y - b)`` read back is ``y``. ``y``'s own grid
    where ``b`` is within ``SHIFT_TOLERANCE`` steps of whole ones; else its scale moved to ``b / k`` (k = b / scale
    towards zero, at least ``MIN_SHIFT_STEPS``: steps up to 1 / k coarser), its low end kept; None otherwise."""
    pair = pair_of(q, index)
    if pair is None:
        return None
    s, z = pair.scale, pair.zero_point
    steps = b / s
    k = round(steps)
    if abs(steps - k) > SHIFT_TOLERANCE:
        k = int(steps)  # towards zero: the steps get coarser, the grid's range wider, nothing more is clipped
        if abs(k) < MIN_SHIFT_STEPS:
            return None
        moved = float(np.float32(b / k))
        s, z = moved, int(np.clip(round(z * s / moved), 0, 255))
    return (s, z, z + k) if 0 <= z + k <= 255 else None


def _affine_nodes(x: str, gate: str, y: str, tail: tuple[float, float, list[onnx.NodeProto]], floor: float, index: GraphIndex,
                  used: set[str], params: _Params) -> list[onnx.NodeProto] | None:
    """Nodes writing ``A x gate + B`` into the tail's last output: a DequantizeLinear of x's uint8 tensor with scale ``A s``
    and the Mul, ``B`` moved into the zero point of the output's QuantizeLinear (whose pair this changes); None where
    ``B`` does not fit (nothing changed)."""
    a, b, tail_nodes = tail
    out = tail_nodes[-1].output[0] if tail_nodes else y
    dq = index.producer[x]
    if a != 1.0:
        s = index.value(dq.input[1])
        if s is None or s.size != 1:
            return None
        scaled = params.scalar("scaled_scale", float(s.reshape(())) * a)
        xa = unique_name(f"{x}_times_{a:.6g}", used)
        nodes = [helper.make_node("DequantizeLinear", [dq.input[0], scaled, dq.input[2]], [xa], name=xa)]
    else:
        xa, nodes = x, []
    if b == 0.0:
        return [*nodes, helper.make_node("Mul", [xa, gate], [out], name=unique_name(f"{out}_mul", used))]
    grids = [(q, _shifted_grid(q, b, index)) for q in index.readers[out]]
    if any(grid is None for _, grid in grids):
        return _added_bias(xa, gate, out, a * floor, b, index, used, params, nodes)
    for q, grid in grids:  # y's pair on a grid where B is whole steps, B in the QuantizeLinear's zero point
        assert grid is not None
        scale, zero = params.scalar("shifted_scale", grid[0]), params.scalar("shifted_zero_point", grid[1], np.uint8)
        for dq in index.readers[q.output[0]]:
            dq.input[1], dq.input[2] = scale, zero
        q.input[1], q.input[2] = scale, params.scalar("shifted_zero_point", grid[2], np.uint8)
    return [*nodes, helper.make_node("Mul", [xa, gate], [out], name=unique_name(f"{out}_mul", used))]


def _added_bias(xa: str, gate: str, out: str, floor: float, b: float, index: GraphIndex, used: set[str], params: _Params,
                nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto] | None:
    """``xa * gate`` on a uint8 pair of its own (over [floor, top of y's grid - B]), then ``+ B`` as a QLinearAdd of a
    constant: for a ``B`` of less than ``MIN_SHIFT_STEPS`` steps. The pair's steps differ from y's, so the second rounding
    adds noise, not the systematic offset that rounding ``B`` to whole steps would."""
    q = index.readers[out][0]
    scale, zero = index.value(q.input[1]), index.value(q.input[2])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1 or zero.dtype != np.uint8:
        return None
    s, z = float(scale.reshape(())), int(zero.reshape(()))
    lo, hi = min(0.0, max(floor, -z * s - b)), max(0.0, (255 - z) * s - b)
    step = float(np.float32((hi - lo) / 255.0))
    if not step > 0.0:
        return None
    pair = (params.scalar("unshifted_scale", step), params.scalar("unshifted_zero_point", int(np.clip(round(-lo / step), 0, 255)), np.uint8))
    h, hq, hd, bd = (unique_name(f"{out}_{k}", used) for k in ("unshifted", "unshifted_u8_quantized", "unshifted_u8_dequantized", "bias"))
    bias = (params.scalar("bias_quantized", 255 if b > 0 else 0, np.uint8), params.scalar("bias_scale", abs(b) / 255.0),
            params.scalar("bias_zero_point", 0 if b > 0 else 255, np.uint8))
    return [*nodes, helper.make_node("Mul", [xa, gate], [h], name=unique_name(f"{h}_mul", used)),
            helper.make_node("QuantizeLinear", [h, *pair], [hq], name=hq), helper.make_node("DequantizeLinear", [hq, *pair], [hd], name=hd),
            helper.make_node("DequantizeLinear", list(bias), [bd], name=bd), helper.make_node("Add", [hd, bd], [out], name=unique_name(f"{out}_add", used))]


def quantize_gates(g: onnx.GraphProto) -> int:
    """Give each HardSwish (and ``x * HardSigmoid(x)``) from a uint8 pair into QuantizeLinear a uint8 gate (in place);
    how many."""
    index = GraphIndex.of(g)
    used = used_names(g)
    params = _Params(g, used)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for node in g.node:
        if not in_default_domain(node) or not node.output:
            continue
        tail = _affine_tail(node.output[0], index) if node.op_type in ("HardSwish", "Mul") else None
        if tail is None:
            continue
        if node.op_type == "HardSwish" and _uint8_dq(node.input[0], index):
            x, y, alpha, beta, sigmoid = node.input[0], node.output[0], 1.0 / 6.0, 0.5, None
        elif node.op_type == "Mul" and len(node.input) == 2:
            found = None
            for x, gate in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
                p = index.producer.get(gate)
                if (p is not None and p.op_type == "HardSigmoid" and in_default_domain(p) and p.input[0] == x and _uint8_dq(x, index)
                        and len(index.readers.get(gate, [])) == 1 and 0 < attribute(p, "alpha", 0.2)):
                    found = (x, p)
            if found is None:
                continue
            x, sigmoid, y = found[0], found[1], node.output[0]
            alpha, beta = float(attribute(sigmoid, "alpha", 0.2)), float(attribute(sigmoid, "beta", 0.5))
        else:
            continue
        gate = unique_name(f"{y}_gate", used)
        floor = hard_sigmoid_product_floor(alpha, beta)
        product = _affine_nodes(x, gate, y, tail, -np.inf if floor is None else floor, index, used, params)
        if product is None:
            continue
        replaced[id(node)] = [*_gate_nodes(x, alpha, beta, gate, used, params), *product]
        for gone in [*([sigmoid] if sigmoid is not None else []), *tail[2]]:
            replaced[id(gone)] = []
    if replaced:
        replace_repeated(g.node, [m for n in g.node for m in replaced.get(id(n), [n])])
    return sum(1 for v in replaced.values() if v)
