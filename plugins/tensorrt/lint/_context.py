"""Shared machinery of the TensorRT lint: the model as the rules see it, and small helpers.

:class:`LintContext` holds one shape-inferred copy of the model (the input is never modified), indexed for
the questions the rules ask: nodes (main graph, control-flow bodies, model-local functions) as
:class:`NodeRef`, constants, element types, shapes, build-time-constant tensors and the TensorRT version.
The rules live in ``tensorrt_lint_qdq``, ``tensorrt_lint_types`` and ``tensorrt_lint_graph``; the public
API is :mod:`converter.plugins.tensorrt.lint._rules`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, shape_inference

from converter import lazy_weights
from converter.backend_api import Finding, Severity
from converter.graph_info import iter_graphs
from converter.plugins.tensorrt.lint import _ops as ops
from converter.plugins.tensorrt.lint._ops import Version

ERROR = Severity.ERROR
WARNING = Severity.WARNING

Dim = int | str | None

RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"})
SUBGRAPH_OPS = frozenset({"Loop", "Scan", "If"})


# --------------------------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class NodeRef:
    """A node and where it lives: the main graph, a control-flow body, or a model-local function."""

    node: onnx.NodeProto
    scope: str = ""

    @property
    def label(self) -> str:
        node = self.node
        name = node.name or f"<{node.op_type} -> {node.output[0] if node.output else '?'}>"
        return f"{self.scope}/{name}" if self.scope else name

    @property
    def op(self) -> str:
        return self.node.op_type

    def is_onnx(self, *op_types: str) -> bool:
        return self.node.domain in ops.ONNX_DOMAINS and self.node.op_type in op_types

    def attr(self, name: str, default: object = None) -> object:
        for a in self.node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def input(self, i: int) -> str:
        """The i-th input name, or "" when absent or omitted."""
        return self.node.input[i] if i < len(self.node.input) else ""


def parse_trt_version(text: str | None) -> Version | None:
    """``"10.8.0.43"`` -> ``(10, 8)``; ``None`` stays ``None``."""
    if text is None:
        return None
    match = re.match(r"\s*(\d+)(?:\.(\d+))?", text)
    if not match:
        raise ValueError(f"not a TensorRT version: {text!r} (expected e.g. '10.8' or '10.8.0.43')")
    return int(match.group(1)), int(match.group(2) or 0)


def _walk_graph(graph: onnx.GraphProto, scope: str) -> Iterator[NodeRef]:
    for node in graph.node:
        ref = NodeRef(node, scope)
        yield ref
        for attr in node.attribute:
            inner = f"{ref.label}/{attr.name}"
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk_graph(attr.g, inner)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for i, g in enumerate(attr.graphs):
                    yield from _walk_graph(g, f"{inner}[{i}]")


_graphs = iter_graphs


def _name_dynamic_batch_dims(graph: onnx.GraphProto) -> None:
    """Give every anonymous dynamic dim 0 of a graph input a name, so shape inference carries it along."""
    initializers = {t.name for t in graph.initializer}
    for vi in graph.input:
        if vi.name in initializers or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].dim_param = f"batch({vi.name})"


def _infer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """A shape-inferred copy of ``model``, and why strict inference failed (then the copy is inferred leniently)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    _name_dynamic_batch_dims(work.graph)
    try:
        return shape_inference.infer_shapes(work, check_type=True, strict_mode=True, data_prop=True), None
    except (shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    except ValueError as exc:  # a protobuf over 2 GiB cannot be inferred in memory
        return work, f"{type(exc).__name__}: {exc}"
    return shape_inference.infer_shapes(work, check_type=False, strict_mode=False, data_prop=True), error


@dataclass
class LintContext:
    """Everything the rules ask about one model: nodes, constants, types, shapes, the TensorRT version."""

    model: onnx.ModelProto
    trt: Version | None
    inference_error: str | None = None
    nodes: list[NodeRef] = field(default_factory=list)
    initializers: dict[str, TensorProto] = field(default_factory=dict)
    constant_nodes: dict[str, NodeRef] = field(default_factory=dict)
    producers: dict[str, NodeRef] = field(default_factory=dict)
    consumers: dict[str, list[tuple[NodeRef, int]]] = field(default_factory=dict)
    types: dict[str, onnx.TypeProto] = field(default_factory=dict)
    functions: set[tuple[str, str]] = field(default_factory=set)
    static: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, model: onnx.ModelProto, trt_version: str | None) -> LintContext:
        inferred, error = _infer(model)
        ctx = cls(inferred, parse_trt_version(trt_version), error)
        ctx._index()
        ctx._find_static()
        return ctx

    def _index(self) -> None:
        for ref in _walk_graph(self.model.graph, ""):
            self._add_node(ref)
        for fn in self.model.functions:
            self.functions.add((fn.domain, fn.name))
            for node in fn.node:
                self._add_node(NodeRef(node, f"function {fn.domain}.{fn.name}"))
        for graph in _graphs(self.model.graph):
            for t in graph.initializer:
                self.initializers[t.name] = t
            for vi in [*graph.input, *graph.output, *graph.value_info]:
                self.types.setdefault(vi.name, vi.type)

    def _add_node(self, ref: NodeRef) -> None:
        self.nodes.append(ref)
        for i, name in enumerate(ref.node.input):
            if name:
                self.consumers.setdefault(name, []).append((ref, i))
        for name in ref.node.output:
            if name:
                self.producers[name] = ref
        if ref.is_onnx("Constant") and ref.node.output:
            self.constant_nodes[ref.node.output[0]] = ref

    def _find_static(self) -> None:
        """Tensors TensorRT can compute at build time: initializers, constants, and what only they feed."""
        self.static = set(self.initializers) | set(self.constant_nodes)
        for ref in self.nodes:
            if self._outputs_static(ref):
                self.static.update(o for o in ref.node.output if o)

    def _outputs_static(self, ref: NodeRef) -> bool:
        if ref.op in RANDOM_OPS or ref.op in SUBGRAPH_OPS or ref.scope.startswith("function "):
            return False
        if ref.is_onnx("Shape", "Size"):
            shape = self.shape(ref.input(0))
            return shape is not None and all(isinstance(d, int) for d in shape)
        inputs = [i for i in ref.node.input if i]
        return bool(inputs) and all(i in self.static for i in inputs)

    # ---- questions the rules ask

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output (through Identity), else None."""
        if name in self.initializers:
            return lazy_weights.to_array(self.initializers[name])
        ref = self.constant_nodes.get(name)
        if ref is not None:
            return constant_value(ref)
        producer = self.producers.get(name)
        if producer is not None and producer.is_onnx("Identity"):
            return self.const(producer.input(0))
        return None

    def elem_type(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        ref = self.constant_nodes.get(name)
        if ref is not None:
            value = ref.attr("value")
            if isinstance(value, TensorProto):
                return value.data_type
        t = self.types.get(name)
        if t is not None and t.HasField("tensor_type") and t.tensor_type.elem_type:
            return t.tensor_type.elem_type
        return None

    def shape(self, name: str) -> list[Dim] | None:
        """Dims as int (static), str (symbolic) or None (unknown); None when even the rank is unknown."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        value = self.const(name)
        if value is not None:
            return list(value.shape)
        t = self.types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        return [_dim(d) for d in t.tensor_type.shape.dim]

    def graph_inputs(self) -> list[onnx.ValueInfoProto]:
        inits = {t.name for t in self.model.graph.initializer}
        return [vi for vi in self.model.graph.input if vi.name not in inits]

    def batch_symbols(self) -> set[str]:
        """Names of the dynamic dim 0 of the graph inputs (anonymous ones were named before inference)."""
        out = set()
        for vi in self.graph_inputs():
            shape = self.shape(vi.name)
            if shape and isinstance(shape[0], str):
                out.add(shape[0])
        return out

    def default_opset(self) -> int | None:
        for imp in self.model.opset_import:
            if imp.domain in ops.ONNX_DOMAINS:
                return imp.version
        return None


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    if d.HasField("dim_value"):
        return d.dim_value if d.dim_value >= 0 else None
    if d.HasField("dim_param") and d.dim_param:
        return d.dim_param
    return None


def constant_value(ref: NodeRef) -> np.ndarray | None:
    for a in ref.node.attribute:
        if a.name == "value":
            return lazy_weights.to_array(a.t)
        if a.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(a))
        if a.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(a)))
    return None


def finding(rule: str, severity: Severity, where: NodeRef | str, message: str) -> Finding:
    return Finding(rule, severity, where.label if isinstance(where, NodeRef) else where, message)


def few(names: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def version_text(v: Version) -> str:
    return f"{v[0]}.{v[1]}"


def type_name(t: int) -> str:
    return TensorProto.DataType.Name(t)
