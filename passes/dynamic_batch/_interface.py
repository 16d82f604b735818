"""The model's interface after the analysis: each graph output's batch dim, and the dims written as ``batch``.

Graph outputs carry the batch where the analysis put it (an LSTM's ``Y_h`` at dim 1); an output
made from a constant of the old batch is broadcast to the run-time batch; an output without a
batch (computed from scalars and tables only) is left as it is. Inputs and outputs get the
symbolic dim at their own batch dim; stale shapes of batched tensors (value_info, the
declared outputs of If branches) are dropped or made symbolic there too.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from converter.graph_info import iter_graphs
from converter.passes.dynamic_batch._analysis import Analysis
from converter.passes.dynamic_batch._facts import Rewrite
from converter.passes.dynamic_batch._flags import fmt_flag
from converter.passes.dynamic_batch._graph import Refuse


def outputs(a: Analysis, nodes: list[onnx.NodeProto], param: str) -> tuple[list[onnx.NodeProto], dict[str, tuple[int, str]], list[str]]:
    """(nodes to append, ``{output: (dim, dim_param)}``, outputs without a batch); refusals go to the analysis."""
    tail: list[onnx.NodeProto] = []
    axes: dict[str, tuple[int, str]] = {}
    unbatched: list[str] = []
    for out in a.graph.output:
        name = out.name
        if name in a.poisoned:
            continue
        try:
            flags = a.flags_of(name)
            batched = [(i, f) for i, f in enumerate(flags) if f is not None]
            if len(batched) > 1:
                raise Refuse(f"it carries the batch in dims {[i for i, _ in batched]}")
            if batched:
                i, f = batched[0]
                if f.k is None:
                    raise Refuse(f"it holds the batch as {fmt_flag(f)}: batch-N samples would come out in another order than N batch-1 runs")
                axes[name] = (i, param if f.k == 1 else f"{param}*{f.k}")
                continue
            dims = a.static.get(name)
            if not dims or dims[0] != a.B or name in a.input_names:
                unbatched.append(name)
                continue
            tail.extend(_batch_output(a, nodes, name, len(dims)))
            axes[name] = (0, param)
        except Refuse as exc:
            a.refusals.append(f"graph output '{name}': {exc}")
            a.refused_at.append(a.position)
    return tail, axes, unbatched


def _batch_output(a: Analysis, nodes: list[onnx.NodeProto], name: str, rank: int) -> list[onnx.NodeProto]:
    prod = a.producer.get(name)
    if prod is None:
        raise Refuse("it is a constant of the old batch, not computed from the inputs")
    if a.uses[name] == 0 and a.rewrite_origin(prod, name, 0, 1):
        return []
    if a.B != 1:
        raise Refuse(f"it holds {a.B} rows that do not come from the batch")
    inner = a.edits.unique(f"{name}/unbatched")
    prod.output[list(prod.output).index(name)] = inner
    for n in nodes:
        for i, x in enumerate(n.input):
            if x == name:
                n.input[i] = inner
    node = a.edits.broadcast_to_batch(inner, rank, 0, 1, 1)
    node.output[0] = name
    a.rewritten.append(Rewrite("graph output", name, "broadcast from a batch-1 constant to the run-time batch"))
    return [node]


def set_dim(vi: onnx.ValueInfoProto, axis: int, param: str | None) -> None:
    dims = vi.type.tensor_type.shape.dim
    if vi.type.tensor_type.HasField("shape") and axis < len(dims):
        dims[axis].Clear()
        if param:
            dims[axis].dim_param = param


def update_interface(model: onnx.ModelProto, input_axes: Mapping[str, int], out_axes: Mapping[str, tuple[int, str]], a: Analysis, param: str) -> None:
    g = model.graph
    for vi in g.input:
        if vi.name in input_axes:
            set_dim(vi, input_axes[vi.name], param)
    for out in g.output:
        if out.name in out_axes:
            set_dim(out, *out_axes[out.name])
    produced = {x for n in g.node for x in n.output}
    for vi in [vi for vi in g.value_info if vi.name not in produced or a.batched(vi.name)]:
        g.value_info.remove(vi)
    for sub in list(iter_graphs(g))[1:]:  # If branches: their shapes were inferred at the old batch
        for vi in [vi for vi in sub.value_info if a.batched(vi.name)]:
            sub.value_info.remove(vi)
        for out in sub.output:
            flags = a.flags.get(out.name, ())
            for i, f in enumerate(flags):
                if f is not None:
                    set_dim(out, i, None if f.k is None else param if f.k == 1 else f"{param}*{f.k}")
