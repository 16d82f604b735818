"""Ranges for the activations a Q/DQ model arrives without (QAT, another tool's PTQ, ``qdq{record_ranges=false}``),
derived from the pairs it has, so the chain can fuse its Convs before SiLU and HardSwish all the same.

A model quantized elsewhere holds Q/DQ on the inputs of its layers only: ``DQ -> Conv -> SiLU -> Q -> DQ -> Conv``.
ORT forms QLinearConv only with a Q right after the Conv, so every Conv before a SiLU or HardSwish runs float between
a DequantizeLinear and the activation: slower than fp32 (YOLOv8n at batch 8 80.9 ms against fp32's 52.2; PP-LCNet 29.7
against 9.9). ``_chain`` adds those pairs from calibrated ranges, which such a model does not carry; but the pair after
the activation bounds what the Conv output can usefully hold. For ``y = f(x)`` with ``f`` SiLU, HardSwish or
``x * HardSigmoid(x)`` (then optionally ``A y + B`` by scalar constants, ``A > 0``) quantized on a grid up to ``hi``:

- above ``f^-1(hi)`` every x gives a y the pair clips to ``hi`` anyway (``f`` rises for x > 0): the top of x's range;
- HardSwish is 0 for every x <= -3 (``x * HardSigmoid``: x <= -beta/alpha): the bottom, exactly;
- SiLU tends to 0 below: the bottom is where ``|f(x)|`` falls under half a step of the pair after it, so what the
  cut changes is lost in that pair's rounding.

These are the only ranges given (and the Sigmoid output's, [0, 1]); a model with recorded ranges keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from converter.activation_floors import GraphView, floor_of
from converter.plugins.ort._graph import GraphIndex, attribute, in_default_domain
from converter.plugins.ort._ranges import ActivationRange

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SILU_VERTEX = -1.2784645


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x)) if x > -700 else 0.0


def _solve(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target for f monotonic on it (bisection)."""
    increasing = f(hi) > f(lo)
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _dequantized(name: str, index: GraphIndex) -> bool:
    p = index.producer.get(name)
    return p is not None and p.op_type == "DequantizeLinear" and in_default_domain(p)


def _activation(x: str, index: GraphIndex) -> tuple[Callable[[float], float], float | None, str, str | None] | None:
    """(f, exact bottom or None, f's output, Sigmoid output or None) where all that reads ``x`` is one SiLU, HardSwish
    or ``x * HardSigmoid(x)``."""
    readers = index.readers.get(x, [])
    if not readers or not all(in_default_domain(r) for r in readers):
        return None
    if len(readers) == 1 and readers[0].op_type == "HardSwish":
        return lambda v: v * min(max(v / 6.0 + 0.5, 0.0), 1.0), -3.0, readers[0].output[0], None
    if len(readers) != 2:
        return None
    gate = next((r for r in readers if r.op_type in ("Sigmoid", "HardSigmoid")), None)
    mul = next((r for r in readers if r.op_type == "Mul"), None)
    if gate is None or mul is None or sorted(mul.input) != sorted([x, gate.output[0]]) or index.readers.get(gate.output[0], []) != [mul]:
        return None
    if gate.op_type == "Sigmoid":
        return _silu, None, mul.output[0], gate.output[0]
    alpha, beta = float(attribute(gate, "alpha", 0.2)), float(attribute(gate, "beta", 0.5))
    if alpha <= 0.0 or beta <= 0.0:
        return None
    return lambda v: v * min(max(alpha * v + beta, 0.0), 1.0), -beta / alpha, mul.output[0], None


PASSING = ("Split", "Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "MaxPool", "Resize", "Concat")
"""Ops whose outputs are values of their data input, or convex mixes of them: a bound on the output bounds what of the input matters."""


def _q_grid(q: onnx.NodeProto, index: GraphIndex) -> tuple[float, float] | None:
    scale = index.value(q.input[1])
    zero = index.value(q.input[2]) if len(q.input) > 2 and q.input[2] else np.array(0, np.uint8)  # no zero point: uint8, 0
    if scale is None or zero is None or scale.size != 1 or zero.size != 1 or not float(scale.reshape(())) > 0.0:
        return None
    s = float(scale.reshape(()))
    return (float(np.iinfo(zero.dtype).max) - int(zero.reshape(()))) * s, s


def _floor(t: str, view: GraphView, depth: int = 6) -> float | None:
    """``floor_of`` seen through the ``PASSING`` ops (a Split, Slice... of a SiLU's output keeps its floor; a Concat has
    its inputs' least floor)."""
    p = view.producer.get(t)
    if p is not None and in_default_domain(p) and p.op_type in PASSING and depth > 0 and not (p.op_type == "Resize" and attribute(p, "mode", "nearest") == "cubic"):
        floors = [_floor(x, view, depth - 1) for x in (p.input if p.op_type == "Concat" else p.input[:1])]
        return None if any(f is None for f in floors) else min(f for f in floors if f is not None)
    return floor_of(t, view)


def _grid_after(y: str, index: GraphIndex, view: GraphView, depth: int = 8, memo: dict[str, tuple[float, float] | None] | None = None) -> tuple[float, float] | None:
    """(top, step): the largest value of ``y`` that still tells apart anything downstream, and the finest step it meets;
    None where some reader is not bounded. Readers: QuantizeLinear (its grid's top and step); the ops of ``PASSING`` (their
    outputs' bounds); a Mul/Add by a positive/any scalar constant (``A y + B``: the bound moved back); an Add of a tensor
    with a known floor ``f`` (values of ``y`` above ``top - f`` are clipped by the pair after the Add whatever the other
    input is)."""
    if memo is not None and y in memo:
        return memo[y]
    found = _bounds(y, index, view, depth, {} if memo is None else memo)
    if memo is not None:
        memo[y] = found
    return found


def _bounds(y: str, index: GraphIndex, view: GraphView, depth: int, memo: dict[str, tuple[float, float] | None]) -> tuple[float, float] | None:
    readers = index.readers.get(y, [])
    if depth <= 0 or not readers or y in index.outputs:
        return None
    tops, steps = [], []
    for r in readers:
        if not in_default_domain(r):
            return None
        if r.op_type == "QuantizeLinear":
            found = _q_grid(r, index)
            if found is None:
                return None
            tops.append(found[0])
            steps.append(found[1])
            continue
        if r.op_type in PASSING and (r.op_type == "Concat" or r.input[0] == y) and not (r.op_type == "Resize" and attribute(r, "mode", "nearest") == "cubic"):
            below = [_grid_after(o, index, view, depth - 1, memo) for o in r.output if o]
            if not below or any(b is None for b in below):
                return None
            tops.append(max(b[0] for b in below if b is not None))
            steps.append(min(b[1] for b in below if b is not None))
            continue
        if r.op_type not in ("Mul", "Add") or len(r.input) != 2 or list(r.input).count(y) != 1:
            return None
        other = r.input[1] if r.input[0] == y else r.input[0]
        c = view.scalar(other)
        after = _grid_after(r.output[0], index, view, depth - 1, memo)
        if after is None:
            return None
        if c is not None and r.op_type == "Mul" and c > 0.0:
            tops.append(after[0] / c)
            steps.append(after[1] / c)
        elif c is not None and r.op_type == "Add":
            tops.append(after[0] - c)
            steps.append(after[1])
        elif r.op_type == "Add" and (floor := _floor(other, view)) is not None:
            tops.append(after[0] - floor)
            steps.append(after[1])
        else:
            return None
    return max(tops), min(steps)


def _bounded_floor(t: str, view: GraphView, depth: int = 6) -> float | None:
    """``_floor``, and for an Add the sum of its inputs' floors (a residual sum of two activations)."""
    p = view.producer.get(t)
    if p is not None and p.op_type == "Add" and in_default_domain(p) and len(p.input) == 2 and depth > 0:
        floors = [_bounded_floor(x, view, depth - 1) for x in p.input]
        return None if any(f is None for f in floors) else sum(f for f in floors if f is not None)
    return _floor(t, view)


def derived_ranges(model: onnx.ModelProto) -> dict[str, ActivationRange]:
    """Ranges derived from the pairs the model has: of the quantized layers' outputs read by one SiLU / HardSwish /
    ``x * HardSigmoid(x)`` (the activation inverted, above), the Sigmoid's output ([0, 1]), and of every other tensor with
    a known floor (after an activation, through the ``PASSING`` ops and residual Adds) whose readers are bounded
    (``_grid_after``): [floor, top]."""
    g = model.graph
    index = GraphIndex.of(g)
    view = index.view()
    memo: dict[str, tuple[float, float] | None] = {}
    ranges: dict[str, ActivationRange] = {}
    for node in g.node:
        if node.op_type not in LAYERS or not in_default_domain(node) or len(node.input) < 2 or not node.output:
            continue
        x = node.output[0]
        if not (_dequantized(node.input[0], index) and _dequantized(node.input[1], index)) or x in index.outputs:
            continue
        found = _activation(x, index)
        grid = _grid_after(found[2], index, view, memo=memo) if found is not None else None
        if found is None or grid is None or not grid[0] > 0.0:
            continue
        f, bottom, _, sigmoid = found
        top = _solve(f, grid[0], 0.0, grid[0] + 8.0)
        if bottom is None:  # SiLU: where |f| falls under half a step of the pair after it (all of it above its least value)
            bottom = _solve(f, -grid[1] / 2.0, -64.0, SILU_VERTEX) if grid[1] / 2.0 < -_silu(SILU_VERTEX) else SILU_VERTEX
        ranges[x] = ActivationRange(bottom, top, max(-bottom, top))
        if sigmoid is not None:
            ranges[sigmoid] = ActivationRange(0.0, 1.0, 1.0)
    for node in g.node:
        if not in_default_domain(node) or node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        for t in node.output:
            if not t or t in ranges or t in index.outputs:
                continue
            floor = _bounded_floor(t, view)
            grid = _grid_after(t, index, view, memo=memo) if floor is not None and math.isfinite(floor) else None
            if floor is not None and grid is not None and grid[0] > max(floor, 0.0):
                ranges[t] = ActivationRange(floor, grid[0], max(-floor, grid[0]))
    return ranges
