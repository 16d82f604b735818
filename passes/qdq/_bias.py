"""Empirical bias correction (Nagel et al., 2019; AIMET's empirical form) for the qdq pass.

Quantizing a layer's weights and input shifts the mean of its output per channel: E[W_q x_q] !=
E[W x]. Each quantized Conv/Gemm/MatMul's own shift is measured on the calibration data in one
run of a probe model: the float model, plus, beside every layer, a copy of the layer reading its
*float* input through that layer's own Q/DQ and int8 weight. Each layer's output mean per channel
is reduced in the graph for both (ReduceMean over every other axis: two small vectors per layer,
memory stays flat), and the difference goes into the layer's bias, which stays float:

    b' = b + E[W x] - E[DQ(W_q) DQ(Q(x))]

Measuring each layer on float inputs keeps corrections from compounding: correcting every layer
by the error measured at the end of the quantized network would fix the same upstream shift once
in the layer that causes it and again in every layer after (measured on EfficientNet-Lite0: top-1
agreement 0.74 -> 0.27). Conv and Gemm get a bias input when they have none; a MatMul's bias is the
constant of the Add that alone reads its output, and a MatMul without one is skipped with the reason.
MatMuls are corrected only when asked (``bias_correction=all``): in transformers they read activations
whose rare outliers the calibrator clips (GELU outputs up to 24, amax 2.2), and the mean shift that
clipping causes, added to every token, made MiniLM-L6 far worse (cosine 0.97 -> 0.08). The same holds
for a Gemm between Reshapes, the form onnxsim gives a transformer's MatMul+Add.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter import lazy_weights
from converter.graph_edit import unique_name
from converter.passes.qdq._probe import Probe
from converter.passes.qdq._weights import constant_nodes, constant_value

Feeds = dict[str, np.ndarray]


@dataclass
class _Target:
    node: onnx.NodeProto
    output: str
    axis: int
    """Channel axis of the output (1 for Conv and Gemm, the last for MatMul)."""
    rank: int
    bias: str | None
    """The constant holding the bias; None: a bias input is to be created."""
    channels: int


@dataclass
class BiasReport:
    corrected: dict[str, float] = field(default_factory=dict)
    """Layer -> largest |correction| relative to its output's std across channels' means (how much it moved)."""
    skipped: dict[str, str] = field(default_factory=dict)
    rounds: int = 0

    def facts(self) -> dict:
        return {"layers": len(self.corrected), "rounds": self.rounds, "largest_shift": {k: round(v, 5) for k, v in sorted(self.corrected.items(), key=lambda kv: -kv[1])[:10]},
                **({"skipped": self.skipped} if self.skipped else {})}


def _consts(graph: onnx.GraphProto) -> dict[str, np.ndarray | None]:
    out: dict[str, np.ndarray | None] = {t.name: None for t in graph.initializer}
    for name, node in constant_nodes(graph).items():
        out[name] = constant_value(node)
    return out


def _const_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return lazy_weights.to_array(t)
    node = constant_nodes(graph).get(name)
    return constant_value(node) if node is not None else None


def _weight_rank(graph: onnx.GraphProto, node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> tuple[int, int] | None:
    """(rank, output channels) of a Conv/Gemm weight read through its DequantizeLinear."""
    name = node.input[1]
    dq = producers.get(name)
    if dq is not None and dq.op_type == "DequantizeLinear":
        name = dq.input[0]
    value = _const_value(graph, name)
    if value is None:
        return None
    if node.op_type == "Conv":
        return value.ndim, value.shape[0]
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 2, value.shape[0] if trans_b else value.shape[-1]


def _token_linear(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], readers: dict[str, list[onnx.NodeProto]]) -> bool:
    """A Gemm that reads a Reshape and whose output only Reshapes read: a per-token linear layer (MatMul+Add) flattened to 2-D."""
    source = producers.get(node.input[0])
    while source is not None and source.op_type in ("DequantizeLinear", "QuantizeLinear"):
        source = producers.get(source.input[0])
    after = [r for r in readers.get(node.output[0], []) if r.op_type != "QuantizeLinear"]
    return source is not None and source.op_type in ("Reshape", "Flatten") and bool(after) and all(r.op_type == "Reshape" for r in after)


def _targets(graph: onnx.GraphProto, names: set[str], ranks: dict[str, int], report: BiasReport, matmul: bool) -> list[_Target]:
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    consts = _consts(graph)
    out = []
    for node in graph.node:
        if not node.output or node.output[0] not in names or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        y = node.output[0]
        if node.op_type == "Gemm" and not matmul and _token_linear(node, producers, readers):
            report.skipped[node.name or y] = ("Gemm between Reshapes (a transformer's MatMul+Add, flattened by onnxsim): not corrected, as a MatMul "
                                             "(MiniLM-L6 after simplify: cosine 0.97 -> 0.13); qdq{bias_correction=all} includes it")
            continue
        if node.op_type in ("Conv", "Gemm"):
            shape = _weight_rank(graph, node, producers)
            if shape is None:
                report.skipped[node.name or y] = "weight shape unknown"
                continue
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if bias is not None and (bias not in consts or len(readers.get(bias, [])) > 1):
                report.skipped[node.name or y] = "bias is not a constant of its own"
                continue
            value = _const_value(graph, bias) if bias is not None else None
            if bias is not None and (value is None or value.size != shape[1]):
                report.skipped[node.name or y] = "bias is not one value per output channel (a broadcast Gemm C): not corrected"
                continue
            out.append(_Target(node, y, 1, shape[0], bias, shape[1]))
            continue
        if not matmul:
            report.skipped[node.name or y] = ("MatMul: not corrected (a transformer's MatMuls read clipped outlier activations; spreading their mean shift "
                                         "over every token hurt: MiniLM-L6 cosine 0.97 -> 0.08); qdq{bias_correction=all} includes them")
            continue
        adds = readers.get(y, [])
        rank = ranks.get(y, 0)
        if len(adds) != 1 or adds[0].op_type != "Add" or rank < 2:
            report.skipped[node.name or y] = "MatMul without a bias Add of its own (or of unknown rank): nothing to correct"
            continue
        other = next((x for x in adds[0].input if x != y), None)
        value = _const_value(graph, other) if other in consts else None
        if value is None or value.ndim != 1 or len(readers.get(other, [])) > 1:
            report.skipped[node.name or y] = "the Add after it has no 1-D constant bias of its own"
            continue
        out.append(_Target(node, y, rank - 1, rank, other, value.shape[0]))
    return out


def _probe(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, targets: list[_Target]) -> tuple[Probe, list[tuple[str, str]]]:
    """The float model with each layer's local quantized copy; outputs: (float mean, local mean) per channel, per target."""
    probe = Probe(float_model, quant_model, "qdq bias correction")
    pairs = []
    for t in targets:
        local = probe.layer(t.node)
        axes = [a for a in range(t.rank) if a != t.axis]
        pairs.append((probe.reduce("ReduceMean", t.output, axes, [t.channels]), probe.reduce("ReduceMean", local, axes, [t.channels])))
    return probe, pairs


def _apply(graph: onnx.GraphProto, t: _Target, delta: np.ndarray, taken: set[str]) -> None:
    if t.bias is None:
        name = unique_name(f"{t.node.name or t.output}_bias", taken)
        graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), name))
        while len(t.node.input) < 3:
            t.node.input.append("")
        t.node.input[2] = name
        t.bias = name
        return
    for init in graph.initializer:
        if init.name == t.bias:
            value = lazy_weights.to_array(init).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array((value + delta.reshape(value.shape)).astype(np.float32), t.bias))
            return
    node = constant_nodes(graph)[t.bias]
    value = constant_value(node).astype(np.float32)
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array((value + delta.reshape(value.shape)).astype(np.float32), t.bias)))


def correct_biases(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, layers: list[str], ranks: dict[str, int],
                   batches: Callable[[], Iterator[Feeds]], matmul: bool = False, log: logging.Logger | None = None) -> BiasReport:
    """Shift the biases of ``layers`` (the output tensors of main-graph layers) in ``quant_model`` (in place) by each one's own measured output-mean error."""
    log = log or logging.getLogger(__name__)
    report = BiasReport()
    targets = _targets(quant_model.graph, set(layers), ranks, report, matmul)
    if not targets:
        return report
    probe, pairs = _probe(float_model, quant_model, targets)
    means = probe.run(batches)
    taken = {o for n in quant_model.graph.node for o in n.output} | {t.name for t in quant_model.graph.initializer}
    for t, (f_name, q_name) in zip(targets, pairs):
        f, q = means.get(f_name), means.get(q_name)
        label = t.node.name or t.output
        if f is None or q is None or f.shape != q.shape or not np.isfinite(f - q).all():
            report.skipped[label] = "output means could not be measured"
            continue
        delta = f - q
        _apply(quant_model.graph, t, delta, taken)
        report.corrected[label] = float(np.max(np.abs(delta))) / (float(np.std(f)) or 1.0)
    report.rounds = 1
    log.info("qdq: bias correction: %d layers corrected, %d skipped", len(report.corrected), len(report.skipped))
    return report
