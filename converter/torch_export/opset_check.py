"""The opset an export actually wrote, the repair of a known exporter defect, and the ONNX checker.

The defect: asked for an opset below 18, the dynamo exporter builds the graph at opset 18 and
converts it down, but leaves ``Split`` in its opset-18 form (attribute ``num_outputs``) in a file
that declares the older opset; the checker, onnxsim and ONNX Runtime reject it
("Unrecognized attribute: num_outputs for operator Split"). :func:`fix_split_num_outputs`
rewrites such a Split into the declared opset's form with the same semantics (opset 18: chunks
of ``ceil(n / num_outputs)``, the last one smaller):

- opset 13..17: the sizes go in the ``split`` input: a constant when the dim is static, else
  computed from ``Shape`` at run time;
- opset 11..12: the sizes go in the ``split`` attribute (static dims only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.errors import ModelError, describe_exception
from converter.graph_edit import replace_repeated, unique_name
from converter.graph_info import iter_graphs

log = logging.getLogger("converter.torch_export")


@dataclass
class OpsetReport:
    requested: int | None
    written: int
    imports: dict[str, int]
    fixes: list[str] = field(default_factory=list)

    def line(self) -> str:
        asked = "exporter default" if self.requested is None else f"requested {self.requested}"
        others = ", ".join(f"{d}:{v}" for d, v in sorted(self.imports.items()) if d not in ("", "ai.onnx"))
        return f"opset {self.written} written ({asked}){'; also ' + others if others else ''}"

    def to_json(self) -> dict[str, object]:
        return {"requested": self.requested, "written": self.written, "imports": self.imports, "fixes": self.fixes}


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("the exported model imports no default ONNX opset")


def _known_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shapes of every value, inferred on a copy that declares opset 18 (where the Split is valid)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for imp in copy.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = max(imp.version, 18)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError) as exc:
        # shapes are an aid (ValueError: a model past protobuf's 2 GiB) here: without them, split sizes are computed at run time
        log.warning("shape inference failed while repairing Split nodes (%s); computing split sizes at run time", describe_exception(exc))
        return {}
    shapes: dict[str, list[int | None]] = {}
    for g in iter_graphs(inferred.graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            t = vi.type.tensor_type
            if t.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


class _Names:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.used = {n for g in iter_graphs(model.graph) for n in [*(i.name for i in g.initializer), *(x for node in g.node for x in [*node.input, *node.output, node.name])]}

    def new(self, base: str) -> str:
        return unique_name(base, self.used)


def _static_sizes(n: int, k: int, where: str) -> list[int]:
    chunk = -(-n // k)
    sizes = [chunk] * (k - 1) + [n - chunk * (k - 1)]
    if sizes[-1] < 0:
        raise ModelError(f"{where}: cannot split a dim of {n} into {k} outputs")
    return sizes


def _runtime_sizes(graph: onnx.GraphProto, node: onnx.NodeProto, axis: int, k: int, names: _Names) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing [c]*(k-1) + [n - c*(k-1)], c = ceil(n / k), n = shape[axis], at run time."""
    base = node.name or node.output[0]
    consts = {"axis": [axis], "km1": [k - 1], "k": [k]}
    cname = {key: names.new(f"{base}_{key}") for key in consts}
    for key, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), cname[key]))
    t = {key: names.new(f"{base}_{key}") for key in ("shape", "n", "nk", "c", "head", "last", "sizes")}
    nodes = [
        helper.make_node("Shape", [node.input[0]], [t["shape"]], name=names.new(f"{base}_Shape")),
        helper.make_node("Gather", [t["shape"], cname["axis"]], [t["n"]], name=names.new(f"{base}_Gather"), axis=0),
        helper.make_node("Add", [t["n"], cname["km1"]], [t["nk"]], name=names.new(f"{base}_Add")),
        helper.make_node("Div", [t["nk"], cname["k"]], [t["c"]], name=names.new(f"{base}_Div")),
        helper.make_node("Mul", [t["c"], cname["km1"]], [t["head"]], name=names.new(f"{base}_Mul")),
        helper.make_node("Sub", [t["n"], t["head"]], [t["last"]], name=names.new(f"{base}_Sub")),
        helper.make_node("Concat", [t["c"]] * (k - 1) + [t["last"]], [t["sizes"]], name=names.new(f"{base}_Concat"), axis=0),
    ]
    return nodes, t["sizes"]


def _set_sizes_input(node: onnx.NodeProto, name: str) -> None:
    if len(node.input) == 1:
        node.input.append(name)
    else:
        node.input[1] = name


def fix_split_num_outputs(model: onnx.ModelProto) -> list[str]:
    """Rewrite opset-18 Split nodes in a model that declares opset < 18; returns one line per repair."""
    opset = default_opset(model)
    if opset >= 18:
        return []
    targets = [(g, n) for g in iter_graphs(model.graph) for n in g.node if n.op_type == "Split" and n.domain in ("", "ai.onnx") and any(a.name == "num_outputs" for a in n.attribute)]
    if not targets:
        return []
    shapes, names, fixes = _known_shapes(model), _Names(model), []
    for graph, node in targets:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, axis = int(attrs["num_outputs"]), int(attrs.get("axis", 0))
        where = f"Split '{node.name or node.output[0]}'"
        replace_repeated(node.attribute, [a for a in node.attribute if a.name != "num_outputs"])
        if len(node.input) > 1 and node.input[1]:
            fixes.append(f"{where}: dropped num_outputs (split sizes were given)")
            continue
        shape = shapes.get(node.input[0])
        dim = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if dim is not None:
            sizes = _static_sizes(dim, k, where)
            if opset >= 13:
                const = names.new(f"{node.name or node.output[0]}_sizes")
                graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), const))
                _set_sizes_input(node, const)
            else:
                node.attribute.append(helper.make_attribute("split", sizes))
            fixes.append(f"{where}: num_outputs={k} (opset 18) → split sizes {sizes} (opset {opset})")
        elif opset >= 13:
            new_nodes, sizes_name = _runtime_sizes(graph, node, axis, k, names)
            position = list(graph.node).index(node)
            for offset, n in enumerate(new_nodes):
                graph.node.insert(position + offset, n)
            _set_sizes_input(node, sizes_name)
            fixes.append(f"{where}: num_outputs={k} (opset 18) → split sizes computed from Shape at run time (opset {opset})")
        else:
            raise ModelError(f"{where} splits a dynamic dim into {k} outputs, which opset {opset} cannot express; export with --opset 13 or newer")
    return fixes


def opset_report(model: onnx.ModelProto, requested: int | None, fixes: list[str]) -> OpsetReport:
    imports = {imp.domain or "": int(imp.version) for imp in model.opset_import}
    return OpsetReport(requested, default_opset(model), imports, fixes)


def check_file(path: Path) -> None:
    """The ONNX checker with full (strict shape-inference) checks on a written model."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"the exported model fails the ONNX checker: {describe_exception(exc)}") from exc
