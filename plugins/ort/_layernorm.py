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


def sums_before_layernorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with each main-graph Add read only by a LayerNormalization (as its input) written as Sum: a copy when
    anything changed (``model`` itself is not changed), and how many."""
    g = model.graph
    index = GraphIndex.of(g)
    position = {id(n): j for j, n in enumerate(g.node)}
    found = []
    for node in g.node:
        if node.op_type != "LayerNormalization" or not in_default_domain(node) or not node.input:
            continue
        add = index.producer.get(node.input[0])
        if (add is None or add.op_type != "Add" or not in_default_domain(add) or len(add.input) != 2 or add.output[0] in index.outputs
                or index.readers.get(add.output[0], []) != [node]):
            continue
        found.append(position[id(add)])
    if not found:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for j in found:
        out.graph.node[j].op_type = "Sum"
    return out, len(found)
