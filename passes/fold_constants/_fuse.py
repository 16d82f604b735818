"""Folding constant per-channel affine ops after a Conv into its weights (option ``fuse_conv``).

``Conv(x, W, b)`` read only by one of

- ``BatchNormalization`` (inference: one output) with constant scale, bias, mean and var:
  ``W' = W * s``, ``b' = (b - mean) * s + bias`` with ``s = scale / sqrt(var + eps)``;
- ``Add`` of a constant per-channel bias (shape ``[M,1,..]``, ``[1,M,1,..]``, ``[1]`` or a scalar):
  ``b' = b + c``;
- ``Mul`` by a constant per-channel scale of such a shape: ``W' = W * c``, ``b' = b * c``;

becomes one Conv with the follower's output name. And a ``Pad`` of zeros on the spatial dims
read only by a Conv becomes the Conv's ``pads`` (as onnxoptimizer's ``fuse_pad_into_conv``). Only float32/float64 weights that are
initializers (never a ``DequantizeLinear`` output: quantized weights stay quantized) and only
when nothing else reads the Conv's output. New weights are computed in float64 and stored in
the weights' dtype; results differ from the unfused graph by float rounding (about 1e-7
relative), which is why this is an option of its own.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from converter import lazy_weights
from converter.graph_edit import unique_name
from converter.passes.fold_constants._constants import delete_at, is_default_domain
from converter.passes.fold_constants._graph import constants, drop_dead, reader_counts, taken_names

_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _per_channel(c: np.ndarray, channels: int, out_rank: int) -> np.ndarray | None:
    """``c`` as a vector of ``channels`` values when it broadcasts per output channel and no wider."""
    if c.ndim > out_rank or c.size not in (1, channels):
        return None
    if c.size == 1:
        return np.full(channels, c.reshape(()), dtype=np.float64)
    full = (1,) * (out_rank - c.ndim) + c.shape
    want = tuple(channels if i == 1 else 1 for i in range(out_rank))
    return c.reshape(-1).astype(np.float64) if full == want else None


def _factors(follower: onnx.NodeProto, conv_out: str, consts: dict[str, onnx.TensorProto], channels: int, rank: int, dtype: int):
    """(scale, shift) with ``follower(conv) = conv * scale + shift`` per channel, or None."""
    op = follower.op_type
    if not is_default_domain(follower):
        return None
    if op == "BatchNormalization":
        if follower.input[0] != conv_out or len([o for o in follower.output if o]) != 1 or _attr(follower, "training_mode", 0):
            return None
        params = [consts.get(x) for x in follower.input[1:5]]
        if any(p is None or p.data_type != dtype or lazy_weights.unreadable(p) for p in params):
            return None
        scale, bias, mean, var = (lazy_weights.to_array(p).astype(np.float64) for p in params)
        if any(p.shape != (channels,) for p in (scale, bias, mean, var)):
            return None
        s = scale / np.sqrt(var + float(_attr(follower, "epsilon", 1e-5)))
        return s, bias - mean * s
    if op in ("Add", "Mul") and len(follower.input) == 2:
        other = follower.input[1] if follower.input[0] == conv_out else follower.input[0]
        if other == conv_out or other not in consts or consts[other].data_type != dtype or lazy_weights.unreadable(consts[other]):
            return None
        c = _per_channel(lazy_weights.to_array(consts[other]), channels, rank)
        if c is None:
            return None
        return (np.ones(channels), c) if op == "Add" else (c, np.zeros(channels))
    return None


def fuse_conv(graph: onnx.GraphProto, opset: int) -> int:
    """Fold per-channel affine followers into Conv weights; returns how many were fused."""
    consts = constants(graph)
    readers = reader_counts(graph)
    outputs = {o.name for o in graph.output}
    reader_of: dict[str, int] = {}
    for i, n in enumerate(graph.node):
        for x in set(n.input):
            reader_of[x] = i
    taken = taken_names(graph)
    drop, freed = [], []
    for node in graph.node:
        if node.op_type != "Conv" or not is_default_domain(node) or len(node.input) < 2 or node.input[1] not in consts:
            continue
        out = node.output[0]
        w_t = consts[node.input[1]]
        if lazy_weights.unreadable(w_t) or w_t.data_type not in _FLOATS or readers[out] != 1 or out in outputs or out not in reader_of:
            continue
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if has_bias and (node.input[2] not in consts or consts[node.input[2]].data_type != w_t.data_type or lazy_weights.unreadable(consts[node.input[2]])):
            continue
        idx = reader_of[out]
        w = lazy_weights.to_array(w_t)
        found = _factors(graph.node[idx], out, consts, w.shape[0], w.ndim, w_t.data_type)
        if found is None:
            continue
        scale, shift = found
        b = lazy_weights.to_array(consts[node.input[2]]).astype(np.float64) if has_bias else np.zeros(w.shape[0])
        new_w = (w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        new_b = (b * scale + shift).astype(w.dtype)
        follower = graph.node[idx]
        w_name, b_name = unique_name(f"{node.input[1]}_fused", taken), unique_name(f"{node.name or out}_bias_fused", taken)
        graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
        freed.extend([node.input[1], *(x for x in follower.input if x != out)] + ([node.input[2]] if has_bias else []))
        node.input[1] = w_name
        if has_bias:
            node.input[2] = b_name
        else:
            node.input.append(b_name)
        node.output[0] = follower.output[0]
        drop.append(idx)
        consts[w_name], consts[b_name] = graph.initializer[-2], graph.initializer[-1]
    delete_at(graph.node, drop)
    drop_dead(graph, freed, opset)
    return len(drop)


def _zero_pads(pad: onnx.NodeProto, consts: dict[str, onnx.TensorProto], opset: int, rank: int) -> list[int] | None:
    """The pads of a constant-mode Pad of zeros that touches only spatial dims, or None."""
    if not is_default_domain(pad) or _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
        return None
    if opset >= 11:
        if len(pad.input) < 2 or pad.input[1] not in consts or (len(pad.input) > 3 and pad.input[3]):
            return None
        if len(pad.input) > 2 and pad.input[2] and (pad.input[2] not in consts or np.any(lazy_weights.to_array(consts[pad.input[2]]) != 0)):
            return None
        pads = [int(v) for v in lazy_weights.to_array(consts[pad.input[1]]).reshape(-1)]
    else:
        pads, value = _attr(pad, "pads", None), _attr(pad, "value", 0.0)
        if pads is None or value != 0:
            return None
        pads = list(pads)
    if len(pads) != 2 * rank or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return None
    return pads


def fuse_pad_into_conv(graph: onnx.GraphProto, opset: int) -> int:
    """Move zero Pads read only by a Conv into the Conv's ``pads``; returns how many moved."""
    consts = constants(graph)
    readers = reader_counts(graph)
    outputs = {o.name for o in graph.output}
    producer = {n.output[0]: n for n in graph.node if n.output and n.op_type == "Pad"}
    freed = []
    for conv in graph.node:
        if conv.op_type != "Conv" or not is_default_domain(conv) or len(conv.input) < 2 or conv.input[1] not in consts:
            continue
        pad = producer.get(conv.input[0])
        if pad is None or readers[conv.input[0]] != 1 or conv.input[0] in outputs:
            continue
        if _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        rank = len(consts[conv.input[1]].dims)
        pads = _zero_pads(pad, consts, opset, rank)
        if pads is None:
            continue
        spatial = rank - 2
        old = list(_attr(conv, "pads", [0] * (2 * spatial)))
        new = [old[i] + pads[2 + i] for i in range(spatial)] + [old[spatial + i] + pads[rank + 2 + i] for i in range(spatial)]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        freed.append(conv.input[0])
        conv.input[0] = pad.input[0]
    drop_dead(graph, freed, opset)
    return len(freed)
