"""A residual Add before LayerNormalization written as Sum, so ORT's CPU provider runs Add and LayerNormalization, not
its fused SkipLayerNormalization, which is several times slower on CPU.

ORT's SkipLayerNormFusion turns ``Add -> LayerNormalization`` (both inputs 3-D) into com.microsoft's
SkipLayerNormalization at every session start. On the CPU provider of ORT 1.32 that kernel is the slower one:
[8, 128, 384] float32, one thread, 1.55 ms for SkipLayerNormalization against 0.21 ms for the same Add and
LayerNormalization run apart (two threads 0.79 / 0.15 ms); all-MiniLM-L6-v2 at batch 8 lost 14% of its int8 speed to
its twelve. ``Sum`` of two tensors is the same computation (with broadcasting, opset 8 on) and the fusion does not
match it. Only for CPU-only sessions: on CUDA the fused kernel is the fast one.
"""

from __future__ import annotations

import onnx

from converter.plugins.ort._graph import GraphIndex, in_default_domain


def _normalized(x: str, index: GraphIndex) -> bool:
    """Whether all that reads ``x`` is one layer norm: a LayerNormalization, or the one written out (opset < 17 exports,
    Paddle) as ``ReduceMean(x)`` and ``Sub(x, mean)``, which ORT's LayerNormFusion makes one before SkipLayerNormFusion."""
    readers = index.readers.get(x, [])
    if x in index.outputs or not readers or not all(in_default_domain(r) for r in readers):
        return False
    if len(readers) == 1:
        return readers[0].op_type == "LayerNormalization" and readers[0].input[0] == x
    mean = [r for r in readers if r.op_type == "ReduceMean"]
    sub = [r for r in readers if r.op_type == "Sub"]
    return len(readers) == 2 and len(mean) == 1 and len(sub) == 1 and list(sub[0].input) == [x, mean[0].output[0]]


def sums_before_layernorm(model: onnx.ModelProto, in_place: bool = False) -> tuple[onnx.ModelProto, int]:
    """``model`` with each main-graph Add read only by a layer norm (:func:`_normalized`) written as Sum, and how many:
    a copy when anything changed (``model`` itself is not changed), or ``model`` changed with ``in_place``."""
    g = model.graph
    index = GraphIndex.of(g)
    found = [j for j, node in enumerate(g.node)
             if node.op_type == "Add" and in_default_domain(node) and len(node.input) == 2 and node.output and _normalized(node.output[0], index)]
    if not found:
        return model, 0
    out = model
    if not in_place:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    for j in found:
        out.graph.node[j].op_type = "Sum"
    return out, len(found)
