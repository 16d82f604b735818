"""Where the qdq pass puts Q/DQ: the inputs of the layers backends run in int8.

Following TensorRT's explicit-quantization placement (which ONNX Runtime's QDQ
fusions also read): the data and weight inputs of Conv, ConvTranspose, Gemm and
MatMul, and both inputs of a residual Add (two activations). ``op_types`` adds
more op types (their float activation inputs are quantized). Each candidate node
left in float is reported with the reason.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import onnx

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_DATA_WEIGHT_INPUTS = (0, 1)


@dataclass
class NodePlan:
    index: int
    name: str
    op_type: str
    activations: list[tuple[int, str]] = field(default_factory=list)
    """(input position, tensor) quantized per tensor with a calibrated scale."""
    weights: list[tuple[int, str, int | None]] = field(default_factory=list)
    """(input position, constant tensor, per-channel axis or None)."""


@dataclass
class Placement:
    nodes: list[NodePlan]
    refused: list[str]
    already_quantized: list[str] = field(default_factory=list)
    """Inputs fed by DequantizeLinear (int8 weights or QAT), left as they are."""

    def activation_tensors(self) -> list[str]:
        seen: dict[str, None] = {}
        for n in self.nodes:
            for _, t in n.activations:
                seen[t] = None
        return list(seen)

    def drop(self, names: set[str], reason_of: dict[str, str]) -> None:
        kept = []
        for n in self.nodes:
            if n.name in names:
                self.refused.append(f"{n.name} ({n.op_type}): {reason_of[n.name]}")
            else:
                kept.append(n)
        self.nodes = kept


@dataclass(frozen=True)
class PlacementRules:
    op_types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep_first_last: bool = False
    per_channel: bool = True


def _excluded_by(node: onnx.NodeProto, label: str, patterns: tuple[str, ...]) -> str | None:
    for p in patterns:
        if p in (node.op_type, label) or fnmatch.fnmatchcase(label, p) or fnmatch.fnmatchcase(node.op_type, p):
            return p
    return None


def weight_axis(node: onnx.NodeProto, position: int, rank: int, per_channel: bool) -> int | None:
    """Per-channel axis of a constant input (its output features), None for per-tensor."""
    if not per_channel or position != 1 or rank < 2:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return rank - 1
    return None


class _Facts:
    """What placement needs to know about tensors: constant?, float32?, made by DequantizeLinear?"""

    def __init__(self, graph: onnx.GraphProto, types: dict[str, int], constants: dict[str, tuple[int, int]]) -> None:
        self.types = types
        self.constants = constants  # name -> (elem type, rank)
        self.dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}

    def elem_type(self, name: str) -> int:
        if name in self.constants:
            return self.constants[name][0]
        return self.types.get(name, 0)


def _type_name(elem: int) -> str:
    return onnx.TensorProto.DataType.Name(elem).lower() if elem else "of unknown type"


def _plan_inputs(node: onnx.NodeProto, positions: tuple[int, ...], facts: _Facts, rules: PlacementRules, plan: NodePlan, already: list[str]) -> str | None:
    """Fill ``plan`` with the node's quantizable inputs; a reason when the node must stay float."""
    for pos in positions:
        if pos >= len(node.input) or not node.input[pos]:
            continue
        name = node.input[pos]
        if name in facts.dq_outputs:
            already.append(f"{plan.name} input {pos} ({name})")
            continue
        elem = facts.elem_type(name)
        if elem != onnx.TensorProto.FLOAT:
            if node.op_type not in LAYER_OPS and elem != 0:
                continue  # extra op types: only their float inputs are quantized (shapes, indices stay)
            return f"input '{name}' is {_type_name(elem)}, not float32"
        if name in facts.constants:
            if node.op_type in LAYER_OPS:
                plan.weights.append((pos, name, weight_axis(node, pos, facts.constants[name][1], rules.per_channel)))
        else:
            plan.activations.append((pos, name))
    if not plan.activations and not plan.weights:
        return "every input is already quantized (DequantizeLinear) or constant"
    return None


def _candidate_positions(node: onnx.NodeProto, facts: _Facts, rules: PlacementRules) -> tuple[int, ...] | None:
    if node.op_type in LAYER_OPS:
        return _DATA_WEIGHT_INPUTS
    if node.op_type in rules.op_types:
        return tuple(range(len(node.input)))
    if node.op_type == "Add" and len(node.input) == 2 and not any(x in facts.constants for x in node.input):
        return (0, 1)  # residual add: two activations
    return None


_FLOAT_OPS = {
    "LayerNormalization": "normalization runs in float (TensorRT's transformer recipe; int8 would lose its mean/variance)",
    "Softmax": "runs in float (TensorRT's transformer recipe); its output is quantized where a MatMul reads it",
    "Gelu": "activation runs in float (TensorRT's transformer recipe)",
    "Erf": "GELU's Erf runs in float (TensorRT's transformer recipe)",
    "LSTM": "recurrent op stays float: neither ONNX Runtime's QDQ fusions nor TensorRT's Q/DQ placement have an int8 form of it",
    "GRU": "recurrent op stays float: neither ONNX Runtime's QDQ fusions nor TensorRT's Q/DQ placement have an int8 form of it",
    "RNN": "recurrent op stays float: neither ONNX Runtime's QDQ fusions nor TensorRT's Q/DQ placement have an int8 form of it",
}
_NORM_READERS = {"LayerNormalization": "LayerNormalization", "ReduceMean": "a decomposed LayerNorm (ReduceMean)", "Softmax": "Softmax"}


def _readers(graph: onnx.GraphProto) -> dict[str, list[tuple[str, onnx.NodeProto]]]:
    out: dict[str, list[tuple[str, onnx.NodeProto]]] = {}
    for n in graph.node:
        for x in n.input:
            out.setdefault(x, []).append((n.op_type, n))
    return out


_RESIDUAL_PRODUCERS = {*LAYER_OPS, "BatchNormalization"}


def _add_kept_float(node: onnx.NodeProto, readers: dict[str, list[tuple[str, onnx.NodeProto]]], producers: dict[str, str]) -> str | None:
    """Why a two-activation Add is not a residual Add to quantize.

    TensorRT fuses a residual Add into the Conv/Gemm that produces one of its inputs; an Add
    with no such producer (e.g. of two squares in an STFT magnitude) gains nothing from int8,
    and one that feeds normalization or Softmax (transformers) stays float by the BERT recipe.
    """
    for op, reader in readers.get(node.output[0], []):
        if op in _NORM_READERS and (op != "ReduceMean" or _decomposed_norm(reader, readers)):
            what = "an attention mask added before Softmax" if op == "Softmax" else f"a residual Add feeding {_NORM_READERS[op]}"
            return f"{what}: stays float (TensorRT's transformer recipe: the normalization path runs in float)"
    if not any(producers.get(x) in _RESIDUAL_PRODUCERS for x in node.input):
        return "no input comes from a Conv/ConvTranspose/Gemm/MatMul: not a residual Add a backend fuses, stays float"
    return None


def _decomposed_norm(node: onnx.NodeProto, readers: dict[str, list[tuple[str, onnx.NodeProto]]]) -> bool:
    """ReduceMean(x) read by Sub (x - mean): the first node of a LayerNorm exported as primitive ops."""
    return node.op_type == "ReduceMean" and any(op == "Sub" for op, _ in readers.get(node.output[0], []))


def place(graph: onnx.GraphProto, types: dict[str, int], constants: dict[str, tuple[int, int]], rules: PlacementRules, prefix: str = "") -> Placement:
    """Plan the Q/DQ of one graph; ``prefix`` names the unnamed nodes of a subgraph (names are model-wide)."""
    facts = _Facts(graph, types, constants)
    readers = _readers(graph)
    producers = {o: n.op_type for n in graph.node for o in n.output}
    candidates: list[tuple[onnx.NodeProto, NodePlan, tuple[int, ...]]] = []
    placement = Placement([], [])
    for index, node in enumerate(graph.node):
        label = node.name or f"{prefix}{node.op_type}_{index}"
        if node.op_type not in rules.op_types and (node.op_type in _FLOAT_OPS or _decomposed_norm(node, readers)):
            why = _FLOAT_OPS.get(node.op_type) or "a decomposed LayerNorm: normalization runs in float (TensorRT's transformer recipe)"
            placement.refused.append(f"{label} ({node.op_type}): {why}")
            continue
        positions = _candidate_positions(node, facts, rules)
        if positions is None:
            continue
        pattern = _excluded_by(node, label, rules.exclude)
        if pattern is not None:
            placement.refused.append(f"{label} ({node.op_type}): excluded by exclude={pattern}")
            continue
        kept = _add_kept_float(node, readers, producers) if node.op_type == "Add" and node.op_type not in rules.op_types else None
        if kept:
            placement.refused.append(f"{label} ({node.op_type}): {kept}")
            continue
        candidates.append((node, NodePlan(index, label, node.op_type), positions))
    layers = [c for c in candidates if c[0].op_type in LAYER_OPS or c[0].op_type in rules.op_types]
    keep = {}
    if rules.keep_first_last and layers:
        keep = {layers[0][1].name: "keep_first_last: the first quantizable layer stays float", layers[-1][1].name: "keep_first_last: the last quantizable layer stays float"}
    for node, plan, positions in candidates:
        reason = keep.get(plan.name) or _plan_inputs(node, positions, facts, rules, plan, placement.already_quantized)
        if reason:
            placement.refused.append(f"{plan.name} ({node.op_type}): {reason}")
        else:
            placement.nodes.append(plan)
    return placement
