"""Facts about a graph: tensor specs with symbolic dims, op histograms, sizes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper

from converter import lazy_weights
from converter.backend_api import TensorSpec


def _dims(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return ()
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _dtype(vi: onnx.ValueInfoProto) -> str:
    elem = vi.type.tensor_type.elem_type
    if not elem:
        return "unknown"
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem)))
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem).lower()


def spec_of(vi: onnx.ValueInfoProto) -> TensorSpec:
    return TensorSpec(vi.name, _dtype(vi), _dims(vi))


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Real inputs: graph inputs that are not initializers (old exporters list weights as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [spec_of(vi) for vi in model.graph.input if vi.name not in inits]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [spec_of(vi) for vi in model.graph.output]


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_graphs(g)


def op_histogram(model: onnx.ModelProto) -> Counter[str]:
    """Op types (domain-qualified when not the default domain), counted across subgraphs."""
    hist: Counter[str] = Counter()
    for g in iter_graphs(model.graph):
        for n in g.node:
            hist[f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type] += 1
    return hist


def node_count(model: onnx.ModelProto) -> int:
    return sum(len(g.node) for g in iter_graphs(model.graph))


def histogram_delta(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    keys = set(before) | set(after)
    return {k: after[k] - before[k] for k in sorted(keys) if after[k] != before[k]}


def opset_version(model: onnx.ModelProto, domain: str = "") -> int | None:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(o.version)
    return None


def initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for g in iter_graphs(model.graph):
        for t in g.initializer:
            total += lazy_weights.nbytes(t)
    return total
