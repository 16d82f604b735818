"""Activation scale search: the amax that minimizes the reading layers' *output* error, not the input's.

A calibrator picks amax from an activation's own distribution (entropy, percentile, mse of x).
What matters is the error of what the layer computes from it: ||W x - W_q DQ(Q(x))||. For each
activation quantized as input 0 of a Conv/ConvTranspose/Gemm/MatMul, candidates are the
calibrator's amax, fractions of the largest |x| seen, and small steps around the calibrator's
choice; one run of a probe model (:mod:`._probe`) computes, beside every reading layer, the layer
from its float input through each candidate's Q/DQ and its own int8 weight, and reduces the squared
difference to the float layer's output to one number per (layer, candidate). The candidate with the
least error summed over the tensor's readers wins (what TensorRT's and ModelOpt's best calibrators
approximate from the activation alone). Cost: one streamed run over ``samples`` calibration samples
of the float model plus (candidates x quantized layers) layer evaluations; memory of the float model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import onnx
from onnx import numpy_helper

from converter.calibration.calibrators import scale_of
from converter.passes.qdq._probe import Feeds, Probe

_FRACTIONS = (1.0, 0.8, 0.6, 0.45, 0.3)
_AROUND = (0.8, 1.25)


@dataclass
class SearchReport:
    chosen: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Tensor -> (calibrator's amax, chosen amax), for the tensors whose scale changed."""
    searched: int = 0
    candidates: int = 0
    gain: dict[str, float] = field(default_factory=dict)
    """Tensor -> output error with the chosen amax / with the calibrator's (lower is better)."""

    def facts(self) -> dict:
        top = sorted(self.gain.items(), key=lambda kv: kv[1])[:10]
        return {"tensors_searched": self.searched, "candidates": self.candidates, "changed": len(self.chosen),
                "largest_gains": {t: {"amax_from": round(self.chosen[t][0], 6), "amax_to": round(self.chosen[t][1], 6), "error_ratio": round(r, 4)} for t, r in top if t in self.chosen}}


def candidates(amax: float, peak: float) -> list[float]:
    """The amax values tried for one activation: the calibrator's, fractions of the peak |x|, steps around the calibrator's."""
    values = {amax, *(peak * f for f in _FRACTIONS), *(amax * g for g in _AROUND if amax * g <= peak)}
    return sorted(v for v in values if v > 0)


def _act_q(dq_out: str, producers: dict[str, onnx.NodeProto]) -> tuple[str, onnx.NodeProto] | None:
    """(float tensor, its QuantizeLinear) behind the DequantizeLinear output ``dq_out``, when it is an activation pair."""
    dq = producers.get(dq_out)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producers.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    return q.input[0], q


def search_scales(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, layers: list[str], amax: dict[str, float], peaks: dict[str, float],
                  batches: Callable[[], Iterator[Feeds]], samples_batches: int, log: logging.Logger | None = None) -> SearchReport:
    """Choose the activation amax of ``layers``' input 0 (layers named by their output tensors, main graph) by their output error, and write it into ``quant_model``'s scales."""
    log = log or logging.getLogger(__name__)
    report = SearchReport()
    q = quant_model.graph
    producers = {o: n for n in q.node for o in n.output}
    names = set(layers)
    readers: dict[str, list[onnx.NodeProto]] = {}
    qnodes: dict[str, onnx.NodeProto] = {}
    for node in q.node:
        if node.output and node.output[0] in names and node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.input:
            found = _act_q(node.input[0], producers)
            if found and found[0] in amax and peaks.get(found[0], 0.0) > 0:
                readers.setdefault(found[0], []).append(node)
                qnodes[found[0]] = found[1]
    if not readers:
        return report
    probe = Probe(float_model, quant_model, "qdq scale search")
    errors: dict[tuple[str, float], list[str]] = {}
    zero = probe.constant(np.array(0, dtype=np.int8), "search_zero_point")
    for tensor, nodes in readers.items():
        for a in candidates(amax[tensor], peaks[tensor]):
            s = probe.constant(np.array(scale_of(a), dtype=np.float32), f"{tensor}_scale_try")
            x = probe.add("DequantizeLinear", [probe.add("QuantizeLinear", [tensor, s, zero], f"{tensor}_q_try"), s, zero], f"{tensor}_dq_try")
            for node in nodes:
                y = probe.layer(node, [x, *(probe.local(i) for i in node.input[1:])])
                diff = probe.add("Sub", [y, node.output[0]], f"{node.output[0]}_err")
                errors.setdefault((tensor, a), []).append(probe.reduce("ReduceSumSquare", diff, None, []))
            report.candidates += 1
    report.searched = len(readers)
    log.info("qdq: scale search over %d activations, %d candidates, on %d calibration batches", len(readers), report.candidates, samples_batches)
    means = probe.run(lambda: islice(batches(), samples_batches))
    for tensor in readers:
        scored = {a: sum(float(means[o]) for o in outs) for (t, a), outs in errors.items() if t == tensor}
        best = min(scored, key=lambda a: (scored[a], abs(a - amax[tensor])))
        base = scored.get(amax[tensor])
        if base is None or not np.isfinite(scored[best]) or best == amax[tensor]:
            continue
        report.chosen[tensor] = (amax[tensor], best)
        report.gain[tensor] = scored[best] / base if base > 0 else 1.0
        _set_scale(q, qnodes[tensor], scale_of(best))
    log.info("qdq: scale search changed %d of %d activation scales", len(report.chosen), report.searched)
    return report


def _set_scale(graph: onnx.GraphProto, q: onnx.NodeProto, scale: float) -> None:
    """Write ``scale`` into the scale initializer the Q (and its DQ) read."""
    for init in graph.initializer:
        if init.name == q.input[1]:
            init.CopyFrom(numpy_helper.from_array(np.array(scale, dtype=np.float32), init.name))
            return
