"""Types and shapes of every tensor fold_constants reasons about, from ONNX shape inference.

Inference runs with data propagation on a skeleton of the model (large weights
become typed graph inputs, so inference neither copies nor reads them). A dim is
an ``int`` when static, the ``dim_param`` string when symbolic (the same name is
the same value, as ONNX defines it), or ``None`` when unknown. Inference that
fails leaves the types the model declares: the pass then folds less, never more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.errors import describe_exception
from converter.onnx_calls import infer_shapes

Dim = int | str | None

log = logging.getLogger("converter.pass.fold_constants")


@dataclass
class TensorType:
    elem_type: int
    dims: tuple[int, ...] | None
    """Static dims, or None when any dim is unknown or symbolic."""
    is_tensor: bool = True
    sym: tuple[Dim, ...] | None = None
    """Every dim with its rank known: an int, a dim_param, or None (unknown); None when the rank is unknown."""


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or None


def tensor_type(vi: onnx.ValueInfoProto) -> TensorType:
    if not vi.type.HasField("tensor_type"):
        return TensorType(0, None, is_tensor=vi.type.WhichOneof("value") is None)
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return TensorType(tt.elem_type, None)
    sym = tuple(_dim(d) for d in tt.shape.dim)
    static = tuple(d for d in sym if isinstance(d, int))
    return TensorType(tt.elem_type, static if len(static) == len(sym) else None, sym=sym)


def skeleton(model: onnx.ModelProto, keep_elements: int = 64) -> onnx.ModelProto:
    """The model without big initializer data: large initializers become typed graph inputs.

    Small ones stay so shape inference can propagate shape values through them. The
    value_info of default-domain nodes' outputs is left out: inference computes it again, and
    a stale declaration (a static dim where the model is dynamic) would otherwise be believed.
    """
    g = model.graph
    recomputed = {o for n in g.node if n.domain in ("", "ai.onnx") for o in n.output}
    small = [t for t in g.initializer if int(np.prod(t.dims)) <= keep_elements and t.data_location != onnx.TensorProto.EXTERNAL]
    kept = {t.name for t in small}
    declared = {i.name for i in g.input}
    big_inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer if t.name not in kept and t.name not in declared]
    graph = helper.make_graph(list(g.node), g.name or "g", [*g.input, *big_inputs], list(g.output), small, value_info=[vi for vi in g.value_info if vi.name not in recomputed])
    skel = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
    skel.functions.extend(model.functions)
    return skel


def infer_types(model: onnx.ModelProto) -> dict[str, TensorType]:
    """Types and shapes of every tensor ONNX shape inference can tell (with data propagation).

    When inference fails, the types the model declares (inputs, outputs, value_info) are used.
    """
    skel = skeleton(model)
    try:
        g = infer_shapes(skel, check_type=False, strict_mode=False, data_prop=True).graph
    except Exception as exc:  # onnx raises many types; folding goes on with what the model declares
        log.debug("fold_constants: shape inference failed (%s); using declared types only", describe_exception(exc))
        g = skel.graph
    types = {vi.name: tensor_type(vi) for vi in [*g.value_info, *g.output, *g.input]}
    for t in model.graph.initializer:
        dims = tuple(int(d) for d in t.dims)
        types[t.name] = TensorType(t.data_type, dims, sym=dims)
    return types


def tensor_nbytes(t: TensorType) -> int | None:
    if t.dims is None or not t.elem_type:
        return None
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize if t.elem_type != onnx.TensorProto.STRING else 8
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def same_shape(a: TensorType | None, b: TensorType | None) -> bool:
    """Both shapes known to be equal: same rank, and per dim the same int or the same dim_param."""
    if a is None or b is None or a.sym is None or b.sym is None or len(a.sym) != len(b.sym):
        return False
    return all(x is not None and x == y for x, y in zip(a.sym, b.sym, strict=True))


def _type_proto(t: TensorType) -> onnx.TypeProto:
    return helper.make_tensor_type_proto(t.elem_type, None if t.sym is None else list(t.sym))


def _merge(old: TensorType | None, new: TensorType) -> TensorType | None:
    """``old`` with the static dims ``new`` adds (its dim_params kept), or None when nothing is gained."""
    if new.sym is None or (old is not None and old.sym is not None and len(old.sym) != len(new.sym)):
        return None
    if old is None or old.sym is None:
        return new if new.elem_type else None
    sym = tuple(n if isinstance(n, int) and not isinstance(o, int) else o for o, n in zip(old.sym, new.sym, strict=True))
    if sym == old.sym:
        return None
    static = tuple(d for d in sym if isinstance(d, int))
    return TensorType(old.elem_type or new.elem_type, static if len(static) == len(sym) else None, sym=sym)


def refine(node: onnx.NodeProto, types: dict[str, TensorType], data: dict[str, np.ndarray], opsets: list[onnx.OperatorSetIdProto]) -> list[str]:
    """Infer ``node``'s outputs again from the types and values known now (a folded Pad's pads, a
    Conv input whose shape became static); returns the outputs whose shape gained static dims."""
    try:
        schema = onnx.defs.get_schema(node.op_type, next(o.version for o in opsets if o.domain in ("", "ai.onnx")), "")
        ins = {x: _type_proto(types[x]) for x in node.input if x and x in types and types[x].elem_type}
        values = {x: numpy_helper.from_array(data[x], x) for x in node.input if x in data}
        out = onnx.shape_inference.infer_node_outputs(schema, node, ins, values, opset_imports=opsets)
    except Exception:  # noqa: BLE001 (inference refuses odd nodes in many ways; the old types stay)
        return []
    improved = []
    for name, tp in out.items():
        if not tp.HasField("tensor_type"):
            continue
        vi = onnx.ValueInfoProto(name=name)
        vi.type.CopyFrom(tp)
        merged = _merge(types.get(name), tensor_type(vi))
        if merged is not None:
            types[name] = merged
            improved.append(name)
    return improved
