"""Static shapes of every tensor of a static-batch model, for the dynamic_batch analysis.

ONNX shape inference with data propagation runs on a skeleton of the model:
large weights become graph inputs of the same type and shape, so inference
neither copies nor reads them (models past 2 GB included). Tensors ONNX leaves
without a full shape are filled in by ONNX Runtime's symbolic shape inference,
and what is still unknown by running the model once (see :func:`static_info`). Inside If
branches, where ONNX inference keeps no data, the analysis fills shapes node by node as it
walks them (:func:`infer_node`), with the integer values it tracks as data.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.errors import describe_exception
from converter.graph_info import iter_graphs

Dims = tuple[int | None, ...]

_SMALL = 64
log = logging.getLogger("converter.pass.dynamic_batch")


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64))


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with weights over 64 elements (or stored outside) turned into typed graph inputs."""
    g = model.graph
    names = {vi.name for vi in g.input}
    small, big_inputs = [], []
    for t in g.initializer:
        external = t.data_location == onnx.TensorProto.EXTERNAL
        if _numel(t) <= _SMALL and not external:
            small.append(t)
        elif t.name not in names:
            big_inputs.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    graph = helper.make_graph(list(g.node), g.name or "g", [*g.input, *big_inputs], list(g.output), initializer=small)
    skel = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    skel.functions.extend(model.functions)
    return skel


def _dims(vi: onnx.ValueInfoProto) -> Dims | None:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim)


def _collect(model: onnx.ModelProto, shapes: dict[str, Dims], types: dict[str, int]) -> None:
    for g in iter_graphs(model.graph):  # subgraphs (If branches) too: names are unique model-wide
        for vi in [*g.input, *g.value_info, *g.output]:
            d = _dims(vi)
            if d is not None and (vi.name not in shapes or None in shapes[vi.name]):
                shapes[vi.name] = d
            if vi.type.tensor_type.elem_type:
                types.setdefault(vi.name, vi.type.tensor_type.elem_type)


def _symbolic_fill(skel: onnx.ModelProto, shapes: dict[str, Dims], types: dict[str, int]) -> None:
    from converter.symbolic_shapes import symbolic_infer

    try:
        out = symbolic_infer(skel, auto_merge=False)
    except Exception as exc:  # a second opinion only: the analysis refuses where shapes stay unknown
        log.info("dynamic_batch: ONNX Runtime symbolic shape inference failed (%s); unknown shapes stay unknown", describe_exception(exc, 200))
        return
    _collect(out, shapes, types)


def _observed_fill(model: onnx.ModelProto, missing: list[str], shapes: dict[str, Dims], types: dict[str, int]) -> None:
    """Run the (static) model once on seeded inputs and read the shapes inference could not tell."""
    from converter.feeds import seeded_feeds
    from converter.graph_info import graph_inputs
    from converter.ort_session import make_session, run_session

    wanted = [m for m in missing if m in types]
    if not wanted:
        return
    extra = [helper.make_tensor_value_info(m, types[m], None) for m in wanted]
    graph = model.graph
    n_before = len(graph.output)
    graph.output.extend(extra)
    try:
        try:
            sess = make_session(model)
            out = run_session(sess, seeded_feeds(graph_inputs(model), seed=0))
        finally:
            del graph.output[n_before:]
    except Exception as exc:  # a third opinion only: the analysis refuses where shapes stay unknown
        log.info("dynamic_batch: running the model to observe %d unknown shapes failed (%s)", len(wanted), describe_exception(exc, 200))
        return
    for name in wanted:
        if name in out:
            shapes[name] = tuple(int(d) for d in np.shape(out[name]))


def _missing(model: onnx.ModelProto, shapes: dict[str, Dims]) -> list[str]:
    return [o for n in model.graph.node for o in n.output if o and (o not in shapes or None in shapes[o])]


_NO_NODE_INFERENCE = {"If", "Loop", "Scan"}


def infer_node(node: onnx.NodeProto, shapes: dict[str, Dims], types: dict[str, int], data: dict[str, np.ndarray], opset: int) -> None:
    """Fill unknown output shapes of one node from its inputs' shapes and known integer values (``data``)."""
    outs = [o for o in node.output if o]
    if not outs or node.domain not in ("", "ai.onnx") or node.op_type in _NO_NODE_INFERENCE:
        return
    if all(o in shapes and None not in shapes[o] for o in outs):
        return
    input_types = {}
    for x in node.input:
        if x and x not in input_types:
            if x not in types:
                return
            dims = shapes.get(x)
            input_types[x] = helper.make_tensor_type_proto(types[x], None if dims is None else list(dims))
    input_data = {}
    for x, arr in data.items():
        try:
            input_data[x] = numpy_helper.from_array(arr.astype(helper.tensor_dtype_to_np_dtype(types[x])), x)
        except (KeyError, TypeError, ValueError):
            continue
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
        inferred = onnx.shape_inference.infer_node_outputs(schema, node, input_types, input_data, opset_imports=[helper.make_opsetid("", opset)])
    except Exception:  # a missing schema or an inference error: the shape stays unknown (rules refuse where needed)
        return
    for name, tp in inferred.items():
        t = tp.tensor_type
        if tp.HasField("tensor_type") and t.HasField("shape") and (name not in shapes or None in shapes[name]):
            shapes[name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim)
        if tp.HasField("tensor_type") and t.elem_type:
            types.setdefault(name, t.elem_type)


def static_info(model: onnx.ModelProto) -> tuple[dict[str, Dims], dict[str, int]]:
    """Dims (None where unknown) and element types of every tensor with a known shape.

    ONNX inference first; ONNX Runtime's symbolic inference for what it leaves
    unknown; last, one ONNX Runtime run of the model (its batch is still static)
    for shapes only data can tell (Mod, Where chains in shape arithmetic).
    """
    skel = skeleton(model)
    inferred = onnx.shape_inference.infer_shapes(skel, check_type=False, strict_mode=False, data_prop=True)
    shapes: dict[str, Dims] = {}
    types: dict[str, int] = {}
    for t in model.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
        types[t.name] = t.data_type
    _collect(inferred, shapes, types)
    if _missing(model, shapes):
        _symbolic_fill(inferred, shapes, types)
    missing = _missing(model, shapes)
    if missing:
        _observed_fill(model, missing, shapes, types)
    return shapes, types
