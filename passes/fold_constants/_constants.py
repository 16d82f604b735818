"""Constant nodes and the small graph helpers fold_constants (and simplify) share."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

MIB = 1 << 20
DEFAULT_DOMAINS = ("", "ai.onnx")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
SHAPE_OPS = frozenset({"Shape", "Size"})



def is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


def constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node holds (named like its output); None for sparse values."""
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        tensor.name = name
        return tensor
    plain = {
        "value_float": lambda a: np.array(a.f, np.float32),
        "value_floats": lambda a: np.array(list(a.floats), np.float32),
        "value_int": lambda a: np.array(a.i, np.int64),
        "value_ints": lambda a: np.array(list(a.ints), np.int64),
        "value_string": lambda a: np.array(a.s.decode("utf-8"), dtype=object),
        "value_strings": lambda a: np.array([s.decode("utf-8") for s in a.strings], dtype=object),
    }
    if attr.name in plain:
        return numpy_helper.from_array(plain[attr.name](attr), name)
    return None  # sparse_value: left as a Constant node


def delete_at(container, indices: Iterable[int]) -> None:
    """Delete items of a repeated protobuf field by index.

    ``container.remove(item)`` searches by comparing messages, which is quadratic on big graphs.
    """
    for i in sorted(set(indices), reverse=True):
        del container[i]


def is_constant_node(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and is_default_domain(node) and len(node.attribute) == 1


def bump_ir_for_initializers(model: onnx.ModelProto) -> bool:
    """IR < 4 requires every initializer to be a graph input; IR 4 lifts that. Returns True if bumped."""
    if model.ir_version >= 4:
        return False
    model.ir_version = 4
    return True


def constant_nodes_to_initializers(model: onnx.ModelProto) -> int:
    """Replace main-graph Constant nodes by initializers (not those that are graph outputs)."""
    g = model.graph
    outputs = {o.name for o in g.output}
    converted: dict[int, onnx.TensorProto] = {}
    for idx, node in enumerate(g.node):
        if not is_constant_node(node) or node.output[0] in outputs:
            continue
        tensor = constant_node_tensor(node)
        if tensor is not None:
            converted[idx] = tensor
    if converted:
        bump_ir_for_initializers(model)
    g.initializer.extend(converted.values())
    delete_at(g.node, converted)
    return len(converted)
