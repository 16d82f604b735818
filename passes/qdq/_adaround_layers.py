"""The layers AdaRound can round (:mod:`._adaround`): each quantized Conv/Gemm/MatMul of the main graph whose weight is an
int8 initializer of its own read through a DequantizeLinear, with what computing it in torch needs.

A layer's weight is handled in matrix form (groups, outputs per group, inputs per group): a Conv's (O, C/g, kh, kw)
reshaped, a Gemm's B (transposed unless transB), a MatMul's (K, N) transposed. Layers left out get a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from converter import lazy_weights
from converter.passes.qdq._weights import INT8_MAX, read_constant


@dataclass
class Layer:
    label: str
    op: str
    x: str
    """The float tensor the layer reads (the input of its activation QuantizeLinear), in both models."""
    x_scale: float | None
    """Its activation scale (None: read unquantized)."""
    int8: onnx.TensorProto
    float_graph: onnx.GraphProto
    weight: str
    """The float weight's name in ``float_graph``."""
    shape: tuple[int, ...]
    scale: np.ndarray
    """Weight scales: one per output channel, or a scalar."""
    groups: int
    inputs: int
    """Inputs per row: groups x inputs per group."""
    outputs: int
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    """(top, left, bottom, right)."""
    auto_pad: str = "NOTSET"
    conv1d: bool = False
    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0
    act: tuple[float, float] | None = None
    """Bounds of the Relu/Clip that alone reads the output (None: none, or a bias that could not be read)."""
    bias_float: np.ndarray | None = None
    bias_quant: np.ndarray | None = None
    rows: int = field(default=0)

    def matrix(self, a: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return a.reshape(self.groups, self.outputs // self.groups, -1)
        return (a if self.trans_b else a.T)[None]

    def float_matrix(self) -> np.ndarray:
        return np.ascontiguousarray(self.matrix(read_constant(self.float_graph, self.weight).astype(np.float32)))

    def int8_matrix(self) -> np.ndarray:
        return np.ascontiguousarray(self.matrix(lazy_weights.to_array(self.int8)))

    def scale_matrix(self) -> np.ndarray:
        if self.scale.size == 1:
            return self.scale.reshape(1, 1, 1).astype(np.float32)
        return self.scale.reshape(self.groups, self.outputs // self.groups, 1).astype(np.float32)


def to_layout(t: Layer, m: np.ndarray) -> np.ndarray:
    """A weight in matrix form back in the layer's own layout."""
    if t.op == "Conv":
        return m.reshape(t.shape)
    return np.ascontiguousarray(m[0] if t.trans_b else m[0].T)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _const(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    try:
        return read_constant(graph, name)
    except (KeyError, ValueError, OSError):
        return None


def _activation(graph: onnx.GraphProto, node: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]], outputs: set[str]) -> tuple[float, float] | None:
    y = node.output[0]
    after = readers.get(y, [])
    if y in outputs or len(after) != 1 or after[0].op_type not in ("Relu", "Clip"):
        return None
    act = after[0]
    if act.op_type == "Relu":
        return 0.0, float("inf")
    attrs = _attrs(act)
    lo, hi = float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
    for pos in (1, 2):
        if len(act.input) > pos and act.input[pos]:
            value = _const(graph, act.input[pos])
            if value is None or value.size != 1:
                return None
            lo, hi = (float(value.reshape(())), hi) if pos == 1 else (lo, float(value.reshape(())))
    return lo, hi


def _bias(graph: onnx.GraphProto, node: onnx.NodeProto, outputs: int) -> np.ndarray | None:
    """The bias added to the layer's output, per output channel; zeros without one; None if it is not a constant."""
    if len(node.input) < 3 or not node.input[2]:
        return np.zeros(outputs, np.float32)
    value = _const(graph, node.input[2])
    if value is None or value.size not in (1, outputs):
        return None
    beta = float(_attrs(node).get("beta", 1.0)) if node.op_type == "Gemm" else 1.0
    return (np.broadcast_to(value.astype(np.float32).reshape(-1), (outputs,)) * beta).astype(np.float32)


def _input(graph: onnx.GraphProto, node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> tuple[str, float | None] | str:
    """(the float tensor behind input 0, its activation scale), or why it cannot be used."""
    dq = producers.get(node.input[0])
    if dq is None or dq.op_type != "DequantizeLinear":
        return node.input[0], None
    q = producers.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return "input 0 is dequantized from something other than a QuantizeLinear"
    scale = _const(graph, dq.input[1])
    zero = _const(graph, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1)
    if scale is None or scale.size != 1 or zero is None or np.any(zero != 0):
        return "input 0's Q/DQ is not per tensor with zero point 0 and a constant scale"
    return q.input[0], float(scale.reshape(()))


def _weight(graph: onnx.GraphProto, node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], readers: dict[str, list[onnx.NodeProto]],
            inits: dict[str, onnx.TensorProto]) -> tuple[onnx.TensorProto, np.ndarray, int] | str:
    """(int8 initializer, scales, the DequantizeLinear's axis) of the weight (input 1), or why there is none."""
    dq = producers.get(node.input[1]) if len(node.input) > 1 else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or inits[dq.input[0]].data_type != onnx.TensorProto.INT8:
        return "its weight (input 1) is not an int8 initializer read through a DequantizeLinear"
    if len(readers.get(dq.input[0], [])) != 1 or len(readers.get(dq.output[0], [])) != 1:
        return "its int8 weight is shared with other nodes"
    scale = _const(graph, dq.input[1])
    zero = _const(graph, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1)
    if scale is None or zero is None or np.any(zero != 0) or not (np.isfinite(scale).all() and (scale > 0).all()):
        return "its weight's scale is not constant and positive with zero point 0"
    return inits[dq.input[0]], scale.astype(np.float32), int(_attrs(dq).get("axis", 1))


def _geometry(t: Layer, node: onnx.NodeProto, rank: int) -> str | None:
    """Conv attributes into ``t`` (a 1-D Conv lifted to 2-D); why not when the Conv is not 1-D or 2-D."""
    if rank not in (3, 4):
        return f"Conv{rank - 2}d: only 1-D and 2-D Conv are expressed"
    a = _attrs(node)
    k = list(t.shape[2:])
    strides = list(a.get("strides", [1] * len(k)))
    dilations = list(a.get("dilations", [1] * len(k)))
    pads = list(a.get("pads", [0] * 2 * len(k)))
    if a.get("kernel_shape") and list(a["kernel_shape"]) != k:
        return "kernel_shape differs from the weight's"
    t.auto_pad = a.get("auto_pad", b"NOTSET")
    t.auto_pad = t.auto_pad.decode() if isinstance(t.auto_pad, bytes) else str(t.auto_pad)
    if rank == 3:
        t.conv1d = True
        k, strides, dilations, pads = [1, *k], [1, *strides], [1, *dilations], [0, pads[0], 0, pads[1]]
    t.kernel, t.strides, t.dilations = (k[0], k[1]), (strides[0], strides[1]), (dilations[0], dilations[1])
    t.pads = (pads[0], pads[1], pads[2], pads[3])
    return None


def label(node: onnx.NodeProto, names: set[str]) -> str | None:
    """How ``names`` calls ``node``: by its output tensor (the name it has in both models) or its node name; None if not at all."""
    if node.output and node.output[0] in names:
        return node.output[0]
    return node.name if node.name and node.name in names else None


def find_layers(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, layers: list[str], skipped: dict[str, str]) -> list[Layer]:
    """The layers of ``layers`` (main-graph nodes of ``quant_model``, by output tensor or node name) AdaRound can round; the others into ``skipped``.

    A layer's float twin is the float model's node producing the same output tensor."""
    q, f = quant_model.graph, float_model.graph
    producers = {o: n for n in q.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in q.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    outputs = {o.name for o in q.output}
    inits = {t.name: t for t in q.initializer}
    twins = {n.output[0]: n for n in f.node if n.output}
    float_tensors = {o for n in f.node for o in n.output} | {i.name for i in f.input}
    names = set(layers)
    out = []
    for node in q.node:
        name = label(node, names)
        if name is None:
            continue
        if node.op_type == "ConvTranspose":
            skipped[name] = "ConvTranspose: not expressed"
            continue
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        found = _weight(q, node, producers, readers, inits)
        source = _input(q, node, producers)
        twin = twins.get(node.output[0])
        if isinstance(found, str) or isinstance(source, str):
            skipped[name] = found if isinstance(found, str) else str(source)
            continue
        if twin is None or twin.op_type != node.op_type or twin.input[0] != source[0] or source[0] not in float_tensors:
            skipped[name] = "the float model has no node of its op type making the same output from the same input"
            continue
        int8, scale, axis = found
        w = _const(f, twin.input[1]) if len(twin.input) > 1 else None
        q8 = lazy_weights.to_array(int8)
        if w is None or w.shape != q8.shape:
            skipped[name] = "its float weight is not a constant of the float model, of the int8 weight's shape"
            continue
        a, channel = _attrs(node), 0
        t = Layer(name, node.op_type, source[0], source[1], int8, f, twin.input[1], w.shape, scale, 1, 0, 0)
        if node.op_type == "Conv":
            t.groups, t.outputs = int(a.get("group", 1)), w.shape[0]
            t.inputs = int(np.prod(w.shape[1:])) * t.groups
            why = _geometry(t, node, w.ndim) or (None if t.outputs % t.groups == 0 else "outputs not divisible by groups")
        else:
            t.trans_a, t.trans_b = bool(a.get("transA", 0)), bool(a.get("transB", 0))
            t.alpha = float(a.get("alpha", 1.0))
            why = None if w.ndim == 2 else f"{node.op_type} with a {w.ndim}-D weight: not expressed"
            if w.ndim == 2:
                t.outputs, t.inputs = (w.shape[0], w.shape[1]) if t.trans_b else (w.shape[1], w.shape[0])
                channel = 0 if t.trans_b else 1
        if why:
            skipped[name] = why
            continue
        if scale.size != 1 and (scale.size != t.outputs or axis % w.ndim != channel):
            skipped[name] = "its weight's scales are not per output channel (or per tensor)"
            continue
        sb = scale.reshape([-1 if i == channel else 1 for i in range(w.ndim)]) if scale.size != 1 else scale.reshape(())
        if not np.array_equal(np.clip(np.rint(w.astype(np.float32) / sb), -INT8_MAX, INT8_MAX), q8.astype(np.float32)):
            skipped[name] = "its int8 values are not the float weight rounded to nearest (already changed?)"
            continue
        if node.op_type != "MatMul":
            t.act = _activation(q, node, readers, outputs)
            t.bias_float, t.bias_quant = _bias(f, twin, t.outputs), _bias(q, node, t.outputs)
            if t.bias_float is None or t.bias_quant is None:
                t.act, t.bias_float, t.bias_quant = None, None, None
        out.append(t)
    return out
