"""The input values that still matter to a tensor's readers: what a new uint8 pair needs to span.

A Conv followed by HardSwish gets a pair on its output for ORT to fuse it; that output
spans e.g. [-34, 17], but HardSwish maps every value below -3 to 0, so a pair over
[-3, 17] loses nothing and has 2.5x finer steps. This module finds such windows from the
readers of a tensor; the window of the tensor is the hull of its readers' windows, and
a reader not known to saturate makes it unbounded.

Known readers (x is the tensor):

- ``Relu(x)``: [0, inf); ``Clip(x, a, b)`` with constant bounds: [a, b];
- ``HardSigmoid(x; alpha, beta)``: [-beta/alpha, (1 - beta)/alpha] (alpha > 0);
- ``HardSwish(x)``: [-3, inf);
- ``Mul(x, HardSigmoid(x; alpha, beta))``: [-beta/alpha, inf);
- HardSwish written out, as Paddle and older PyTorch exports do: ``Add(x, c) -> Clip(0, h)
  -> [Mul/Div by a positive constant]... -> Mul(x, .)`` (the Add and the Mul both read
  x): for x <= -c the Clip gives 0 and so does the product, so [-c, inf).
"""

from __future__ import annotations

import math

import onnx

from converter.plugins.ort._graph import GraphIndex, attribute, in_default_domain

Window = tuple[float, float]
UNBOUNDED: Window = (-math.inf, math.inf)


def _scalar(g: onnx.GraphProto, index: GraphIndex, name: str) -> float | None:
    if not name:
        return None
    v = index.value(name)
    return float(v.reshape(())) if v is not None and v.size == 1 else None


def _clip_bounds(node: onnx.NodeProto, g: onnx.GraphProto, index: GraphIndex) -> Window | None:
    if len(node.input) > 1:
        low = _scalar(g, index, node.input[1])
        high = _scalar(g, index, node.input[2]) if len(node.input) > 2 else None
        if (node.input[1] and low is None) or (len(node.input) > 2 and node.input[2] and high is None):
            return None  # a bound that is not a constant
    else:
        low, high = attribute(node, "min"), attribute(node, "max")
    return (-math.inf if low is None else float(low), math.inf if high is None else float(high))


def _positive_scaling(node: onnx.NodeProto, x: str, g: onnx.GraphProto, index: GraphIndex) -> bool:
    """``node`` is Mul or Div of ``x`` by a positive constant (Mul either way round)."""
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return False
    other = node.input[1] if node.input[0] == x else (node.input[0] if node.op_type == "Mul" and node.input[1] == x else None)
    value = _scalar(g, index, other) if other else None
    return value is not None and value > 0.0


def _single_reader(name: str, index: GraphIndex) -> onnx.NodeProto | None:
    readers = index.readers.get(name, [])
    return readers[0] if len(readers) == 1 and name not in index.outputs else None


def _written_out_hardswish(add: onnx.NodeProto, x: str, g: onnx.GraphProto, index: GraphIndex) -> tuple[Window, onnx.NodeProto] | None:
    """(window, the closing Mul) when ``add`` starts ``Add(x, c) -> Clip(0, h) -> [scaling]... -> Mul(x, .)``."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    c = _scalar(g, index, add.input[1] if add.input[0] == x else add.input[0])
    clip = _single_reader(add.output[0], index)
    if c is None or clip is None or clip.op_type != "Clip" or clip.input[0] != add.output[0]:
        return None
    bounds = _clip_bounds(clip, g, index)
    if bounds is None or bounds[0] != 0.0:
        return None
    value, node = clip.output[0], _single_reader(clip.output[0], index)
    while node is not None and _positive_scaling(node, value, g, index):
        value, node = node.output[0], _single_reader(node.output[0], index)
    if node is None or node.op_type != "Mul" or sorted(node.input) != sorted([x, value]):
        return None
    return (-c, math.inf), node


def _reader_window(node: onnx.NodeProto, x: str, g: onnx.GraphProto, index: GraphIndex) -> Window | None:
    """The window of one reader on its own, or None when it is not one of the known saturating readers."""
    if not in_default_domain(node) or not node.input or node.input[0] != x:
        return None
    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type == "Clip":
        return _clip_bounds(node, g, index)
    if node.op_type == "HardSwish":
        return -3.0, math.inf
    if node.op_type == "HardSigmoid":
        alpha, beta = float(attribute(node, "alpha", 0.2)), float(attribute(node, "beta", 0.5))
        return (-beta / alpha, (1.0 - beta) / alpha) if alpha > 0 else None
    return None


def reader_window(x: str, g: onnx.GraphProto, index: GraphIndex) -> Window:
    """The values of ``x`` its readers can tell apart: outside it, x can be clamped to the window's edge losslessly."""
    readers = index.readers.get(x, [])
    if not readers or x in index.outputs:
        return UNBOUNDED
    windows: list[Window] = []
    closing: set[str] = set()  # outputs of the Mul that closes a written-out HardSwish: already counted
    for node in readers:
        if node.op_type == "Mul" and node.output[0] in closing:
            continue
        hswish = _written_out_hardswish(node, x, g, index) if node.op_type == "Add" else None
        if hswish is not None:
            windows.append(hswish[0])
            closing.add(hswish[1].output[0])
            continue
        w = _reader_window(node, x, g, index)
        if w is None and node.op_type == "Mul":
            w = _gated_window(node, x, index)
        if w is None:
            if node.op_type == "Mul" and any(_closes(node, r, x, g, index) for r in readers):
                continue  # the Mul of a written-out HardSwish seen before its Add
            return UNBOUNDED
        windows.append(w)
    return min(w[0] for w in windows), max(w[1] for w in windows)


def _gated_window(mul: onnx.NodeProto, x: str, index: GraphIndex) -> Window | None:
    """``Mul(x, HardSigmoid(x; alpha, beta))`` (HardSwish as two ops): 0 for x <= -beta/alpha, so [-beta/alpha, inf)."""
    if not in_default_domain(mul) or len(mul.input) != 2 or x not in mul.input:
        return None
    gate = index.producer.get(mul.input[1] if mul.input[0] == x else mul.input[0])
    if gate is None or gate.op_type != "HardSigmoid" or not in_default_domain(gate) or gate.input[0] != x:
        return None
    alpha, beta = float(attribute(gate, "alpha", 0.2)), float(attribute(gate, "beta", 0.5))
    return (-beta / alpha, math.inf) if alpha > 0 else None


def _closes(mul: onnx.NodeProto, add: onnx.NodeProto, x: str, g: onnx.GraphProto, index: GraphIndex) -> bool:
    found = _written_out_hardswish(add, x, g, index) if add.op_type == "Add" else None
    return found is not None and found[1].output[0] == mul.output[0]
