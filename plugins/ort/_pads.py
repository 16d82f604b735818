"""Fold a constant zero Pad in front of Conv into the Conv's own pads.

Exporters write ``Pad`` before a Conv where a framework pads asymmetrically (Paddle,
TensorFlow "SAME"); the canonical graph then quantizes the Pad's output for the Conv:
``x -> Pad -> Q -> DQ -> Conv``. ORT fuses the Q/DQ and the Conv into QLinearConv either
way, but the Pad stays a separate float copy of the activation. Zero padding commutes
with quantization (0 is exact on every grid the pairs use, and QLinearConv pads with the
zero point), so ``x -> Q -> DQ -> Conv(pads + Pad's pads)`` computes the same values.

Folded only when the Pad is ``constant`` mode with value 0 (or none), its pads are
constant, non-negative and zero on the batch and channel axes, and every reader of its
output (directly, or through the one Q/DQ pair on it) is a Conv reading it as input 0
with explicit pads (``auto_pad`` NOTSET).
"""

from __future__ import annotations

import numpy as np
import onnx

from converter.graph_edit import replace_repeated
from converter.plugins.ort._graph import GraphIndex, attribute, in_default_domain


def _pad_amounts(node: onnx.NodeProto, g: onnx.GraphProto, index: GraphIndex) -> list[int] | None:
    """The Pad's pads (begins of every axis, then ends) when it is a constant zero padding this step can fold."""
    if node.op_type != "Pad" or not in_default_domain(node) or attribute(node, "mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(node.input) > 3 and node.input[3]:
        return None  # axes (opset 18): not handled
    if len(node.input) > 1:
        pads = index.value(node.input[1]) if node.input[1] else None
        value = index.value(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
    else:  # opset < 11: attributes
        pads, value = attribute(node, "pads"), attribute(node, "value", 0.0)
    if pads is None or value is None:
        return None
    amounts = [int(p) for p in np.asarray(pads).ravel()]
    rank = len(amounts) // 2
    if rank < 3 or len(amounts) != 2 * rank or any(p < 0 for p in amounts) or any(amounts[i] or amounts[rank + i] for i in (0, 1)):
        return None
    flat = np.asarray(value).ravel()
    if flat.size != 1 or float(flat[0]) != 0.0:
        return None
    return amounts


def _conv_readers(name: str, index: GraphIndex) -> list[onnx.NodeProto] | None:
    readers = index.readers.get(name, [])
    ok = readers and name not in index.outputs and all(
        r.op_type == "Conv" and in_default_domain(r) and r.input[0] == name and list(r.input[1:]).count(name) == 0
        and attribute(r, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") for r in readers)
    return readers if ok else None


def _targets(pad_out: str, index: GraphIndex) -> tuple[list[onnx.NodeProto], onnx.NodeProto | None] | None:
    """(the Convs that read the Pad's output, the Q of the pair between them or None), when the fold applies."""
    readers = index.readers.get(pad_out, [])
    if pad_out in index.outputs or not readers:
        return None
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
        q = readers[0]
        dqs = index.readers.get(q.output[0], [])
        if q.output[0] in index.outputs or not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            return None
        convs: list[onnx.NodeProto] = []
        for d in dqs:
            found = _conv_readers(d.output[0], index)
            if found is None:
                return None
            convs += found
        return convs, q
    convs = _conv_readers(pad_out, index)
    return (convs, None) if convs is not None else None


def fold_pads(g: onnx.GraphProto) -> list[str]:
    """Fold every foldable Pad into the Convs after it; the names (or outputs) of the Pads removed."""
    index = GraphIndex.of(g)
    removed: dict[int, onnx.NodeProto] = {}
    for position, node in enumerate(g.node):
        amounts = _pad_amounts(node, g, index)
        targets = _targets(node.output[0], index) if amounts is not None and len(node.output) == 1 else None
        if targets is None or amounts is None:
            continue
        convs, q = targets
        rank = len(amounts) // 2
        spatial = rank - 2
        if any(len(attribute(c, "pads", [0] * 2 * spatial)) != 2 * spatial for c in convs):
            continue
        for conv in convs:
            old = list(attribute(conv, "pads", [0] * 2 * spatial))
            new = [old[i] + amounts[2 + i] for i in range(spatial)] + [old[spatial + i] + amounts[rank + 2 + i] for i in range(spatial)]
            kept = [a for a in conv.attribute if a.name not in ("pads", "auto_pad")]
            replace_repeated(conv.attribute, [*kept, onnx.helper.make_attribute("pads", new)])
            if q is None:
                conv.input[0] = node.input[0]
        if q is not None:
            q.input[0] = node.input[0]
        removed[position] = node
    names = [n.name or n.output[0] for n in removed.values()]
    if removed:
        replace_repeated(g.node, [n for i, n in enumerate(g.node) if i not in removed])
    return names
