"""The dim names written in the exported graph are the user's symbols.

The exporters name a dynamic dim after its ``Dim``/``dynamic_axes`` symbol, but torch may name it
otherwise (``s0``, ``s1``, ... when it does not keep the name). The dims of the graph inputs are
the truth: wherever an input's dynamic axis carries another name, that name is replaced by the
symbol throughout the graph's typed values (inputs, outputs, value_info; inside expressions such
as ``s0 + 1`` too), so the outputs whose dims follow a symbol carry that symbol.
"""

from __future__ import annotations

import re

import onnx

from converter.graph_info import iter_graphs
from converter.torch_export.dynamic import DynamicAxes

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _dims(vi: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    t = vi.type.tensor_type
    return list(t.shape.dim) if t.HasField("shape") else []


def name_dims(model: onnx.ModelProto, dyn: DynamicAxes) -> dict[str, str]:
    """Rename dim params so that each dynamic input axis is its symbol; returns {old: symbol} (empty: nothing renamed)."""
    inits = {i.name for i in model.graph.initializer}
    mapping: dict[str, str] = {}
    for vi in model.graph.input:
        per = dyn.axes.get(vi.name)
        if vi.name in inits or not per:
            continue
        dims = _dims(vi)
        for axis, symbol in per.items():
            if axis < len(dims) and dims[axis].dim_param and dims[axis].dim_param != symbol:
                mapping.setdefault(dims[axis].dim_param, symbol)
    if not mapping:
        return {}
    for graph in iter_graphs(model.graph):
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            for dim in _dims(vi):
                if dim.dim_param:
                    dim.dim_param = _WORD.sub(lambda m: mapping.get(m.group(0), m.group(0)), dim.dim_param)
    return mapping
