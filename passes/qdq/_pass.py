"""qdq: symmetric int8 quantization as QuantizeLinear/DequantizeLinear in the graph.

The canonical form every backend reads (TensorRT's explicit quantization;
ONNX Runtime fuses the same pairs into int8 kernels):

- scale = amax / 127, zero point 0 (int8). Activations per tensor, amax from
  calibration over real inputs (``calibrator``); ``QuantizeLinear`` saturates to
  [-128, 127], so -128 is the only value outside [-127, 127] an activation can
  take (where x < -amax * 128/127).
- Weights per output channel (Conv axis 0, ConvTranspose axis 1, Gemm/MatMul the
  output features: axis 0 of B with transB, else its last axis), quantized here
  into int8 initializers clamped to [-127, 127], read through DequantizeLinear.
  Weights in Constant nodes are quantized too. Bias stays float.
- Placement: inputs of Conv/ConvTranspose/Gemm/MatMul (both inputs of an attention
  MatMul) and of residual Adds, in the main graph and inside If/Loop/Scan bodies
  (``_placement``, ``_model_plan``); normalization, Softmax, GELU and recurrent ops
  stay float; every candidate node left float is listed with why.
- A graph that already holds Q/DQ on activations (QAT) is kept as it is;
  ``qat_check`` verifies its zero points are 0 and its scales finite and positive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import onnx

from converter.calibration import RAY
from converter.calibration.calibrators import Calibrator, scale_of
from converter.calibration.collector import value_infos
from converter.errors import PassRefused, UsageError
from converter.graph_info import iter_graphs, opset_version
from converter.options import bounded
from converter.pass_api import Pass, PassContext, PassResult
from converter.passes.opset import OpsetConversionFailed, upgrade_opset
from converter.passes.qdq._adaround import adaround
from converter.passes.qdq._bias import correct_biases
from converter.passes.qdq._calibrate import CalibSettings, calibrate
from converter.passes.qdq._fit import Budget, facts_of, fit
from converter.passes.qdq._insert import Inserted
from converter.passes.qdq._model_plan import ModelPlan, apply_plan, place_model
from converter.passes.qdq._placement import PlacementRules
from converter.passes.qdq._qat import activation_qdq_nodes, qat_problems
from converter.passes.qdq._ranges import activation_tensors, record
from converter.passes.qdq._search import search_scales

MIN_OPSET = 13
_LISTED = 6


@dataclass(frozen=True)
class QdqOptions:
    calibrator: Literal["minmax", "percentile", "entropy", "mse"] = field(default="percentile", metadata={"help": "how amax is chosen from the activations seen: percentile (default, 99.99), minmax, entropy (TensorRT's KL search), mse"})
    percentile: float = field(default=99.99, metadata=bounded(50.0, 100.0, "percentile calibrator: the percentile of |x| taken as amax"))
    op_types: tuple[str, ...] = field(default=(), metadata={"help": "more op types whose float activation inputs get Q/DQ (e.g. [MaxPool,Concat])"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "nodes kept float: node names or op types, or glob patterns of either (e.g. [head/*,Gemm])"})
    keep_first_last: bool = field(default=False, metadata={"help": "keep the first and the last quantizable layers in float"})
    per_channel: bool = field(default=True, metadata={"help": "weights per output channel (false: one scale per weight)"})
    samples: int = field(default=512, metadata=bounded(1, 10_000_000, "calibration samples used at most"))
    batch_size: int = field(default=8, metadata=bounded(1, 65536, "samples per calibration batch (a static batch-1 model is made dynamic on a copy, or fed one by one)"))
    cache: str | None = field(default=None, metadata={"help": "calibration cache: PATH.json (ours, reused when calibrator, model and data match) or a TensorRT cache text file (read as is, written after calibration)"})
    target_cosine: float | None = field(default=None, metadata=bounded(0.0, 1.0, "accuracy budget: keep the most sensitive nodes in float until the cosine of every output against the float model reaches this on held-out samples (e.g. 0.99)"))
    target_top1: float | None = field(default=None, metadata=bounded(0.0, 1.0, "accuracy budget for classifiers: top-1 agreement with the float model on held-out samples (e.g. 0.99)"))
    holdout: int = field(default=32, metadata=bounded(1, 4096, "accuracy budget: samples of the calibration data kept out of calibration to measure it on (taken after the calibration samples)"))
    scale_search: bool = field(default=False, metadata={"help": "choose each layer input's amax among candidates by the reading layers' output error on the calibration data (one probe run)"})
    search_samples: int = field(default=16, metadata=bounded(1, 100_000, "scale search: calibration samples it measures on"))
    adaround: bool = field(default=False, metadata={"help": "AdaRound: learn each Conv/Gemm/MatMul weight's rounding (up or down) from its output on calibration data (needs torch; minutes: EfficientNet-Lite0 ~270 s); replaces bias correction"})
    adaround_samples: int = field(default=64, metadata=bounded(1, 100_000, "AdaRound: calibration samples its layer inputs come from"))
    adaround_iterations: int = field(default=500, metadata=bounded(1, 100_000, "AdaRound: optimization steps per layer"))
    adaround_seconds: float | None = field(default=None, metadata=bounded(0.0, 1e7, "AdaRound: total time budget; layers not reached keep round-to-nearest"))
    bias_correction: Literal["off", "on", "all"] = field(default="on", metadata={"help": "empirical bias correction: shift each quantized Conv/Gemm's bias by its own output-mean error per channel on the calibration data (on), MatMuls too (all)"})
    record_ranges: bool = field(default=True, metadata={"help": "also calibrate every other float activation of the main graph and record the ranges in the model's metadata (converter.qdq.activation_ranges) for backends that quantize more ops, like the ort lowering"})
    qat_check: bool = field(default=True, metadata={"help": "a model that already holds Q/DQ: fail unless every zero point is 0 and every scale finite and positive"})

    def __post_init__(self) -> None:
        Calibrator(self.calibrator, self.percentile)
        if self.samples < 1:
            raise ValueError("samples must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.target_cosine is not None and self.target_top1 is not None:
            raise ValueError("give target_cosine or target_top1, not both")

    @property
    def budget(self) -> Budget | None:
        if self.target_cosine is not None:
            return Budget("cosine", self.target_cosine)
        if self.target_top1 is not None:
            return Budget("top1", self.target_top1)
        return None


def _normalization_outputs(model: onnx.ModelProto) -> set[str]:
    """Outputs of LayerNormalization (any graph): their few outlier channels are what the next MatMul reads
    (Bondarenko et al., 2021), so their amax is the largest value seen, whatever the calibrator."""
    return {n.output[0] for g in iter_graphs(model.graph) for n in g.node if n.op_type in ("LayerNormalization", "SkipLayerNormalization") and n.output}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _types(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Element type and rank (where known) of every tensor shape inference can tell."""
    infos = value_infos(model)
    ranks = {name: len(vi.type.tensor_type.shape.dim) for name, vi in infos.items() if vi.type.tensor_type.HasField("shape")}
    return {name: vi.type.tensor_type.elem_type for name, vi in infos.items()}, ranks


class QdqPass(Pass[QdqOptions]):
    name = "qdq"
    summary = "Symmetric int8 Q/DQ (per-channel weights, calibrated activations) where backends fuse it."
    Options = QdqOptions
    output_precision = "int8"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        existing = activation_qdq_nodes(model)
        if existing:
            return self._keep_qat(model, existing, ctx)
        upgraded: dict[str, int] = {}
        if (opset_version(model) or 0) < MIN_OPSET:
            model, upgraded = self._upgrade(model, ctx)
        o = self.options
        rules = PlacementRules(o.op_types, o.exclude, o.keep_first_last, o.per_channel)
        types, ranks = _types(model)
        pristine = _copy(model) if o.budget or o.bias_correction != "off" or o.scale_search or o.adaround else None
        placement = place_model(model, types, rules)
        if not placement.nodes:
            ctx.log.info("qdq: nothing to quantize (%d candidate nodes refused)", len(placement.refused))
            return PassResult(model, bool(upgraded), facts={"quantized_nodes": 0, **({"opset_upgraded": upgraded} if upgraded else {})}, refused=placement.refused or ["no Conv, ConvTranspose, Gemm, MatMul or residual Add in the graph"])
        tensors = placement.activation_tensors()
        facts: dict = {"calibrator": Calibrator(o.calibrator, o.percentile).label}
        if upgraded:
            facts["opset_upgraded"] = upgraded
        scales: dict[str, float] = {}
        if tensors:
            settings = CalibSettings(Calibrator(o.calibrator, o.percentile), o.samples, o.batch_size, o.cache, o.holdout if o.budget else 0)
            extra = [t for t in activation_tensors(model, types) if t not in set(tensors)] if o.record_ranges else []
            calibrated = calibrate(model, tensors, settings, ctx, extra)
            facts.update(calibrated.facts)
            amax = {t: r.amax for t, r in calibrated.ranges.items()}
            unclipped = _normalization_outputs(model) & set(amax) if o.calibrator != "minmax" else set()
            for t in unclipped:  # outlier channels of LayerNorm outputs carry meaning: never clipped (a TensorRT cache has amax only)
                r = calibrated.ranges[t]
                amax[t] = max(abs(r.min), abs(r.max)) if r.min is not None and r.max is not None else r.amax
            if unclipped:
                facts["unclipped_normalization_outputs"] = sorted(unclipped)
            scales = self._scales(placement, amax, set(calibrated.facts.get("not_reached", [])))
            facts["ranges"] = {t: {"amax": r.amax, "min": r.min, "max": r.max} for t, r in calibrated.ranges.items() if t in set(tensors)}
            if o.record_ranges:
                facts["recorded_ranges"] = record(model, calibrated.ranges, amax, Calibrator(o.calibrator, o.percentile).label)
            if o.budget and not calibrated.heldout:
                raise UsageError("qdq{target_cosine|target_top1} measures on held-out samples of --calib-data; a TensorRT calibration cache carries no samples")
            if o.budget and pristine is not None and placement.nodes:
                result = fit(pristine, placement, types, rules, scales, calibrated.heldout, o.budget, ctx.model_dir, ctx.log, ray=ctx.inputs.get(RAY))
                facts["budget"] = facts_of(result)
                scales = {t: scales[t] for t in placement.activation_tensors()}
        if not placement.nodes:
            return PassResult(model, bool(upgraded), facts=facts, refused=placement.refused)
        inserted = apply_plan(model, placement, scales, ctx.model_dir)
        model.ir_version = max(model.ir_version, 4)  # IR 3 requires every initializer to be a graph input; the scales are not
        if o.scale_search and pristine is not None and tensors and calibrated.replay is not None:
            layers = [pristine.graph.node[n.index].output[0] for n in placement.graphs[0].placement.nodes]
            peaks = {t: max(abs(r.min), abs(r.max)) for t, r in calibrated.ranges.items()}
            searched = search_scales(pristine, model, layers, amax, peaks, calibrated.replay, -(-o.search_samples // calibrated.replay_batch), ctx.log)
            facts["scale_search"] = searched.facts()
            inserted.activation_scales.update({t: scale_of(a) for t, (_, a) in searched.chosen.items()})
            if searched.chosen and o.record_ranges:
                amax.update({t: a for t, (_, a) in searched.chosen.items()})
                record(model, calibrated.ranges, amax, Calibrator(o.calibrator, o.percentile).label)
        if o.adaround and pristine is not None and tensors and calibrated.replay is not None:
            layers = [pristine.graph.node[n.index].output[0] for n in placement.graphs[0].placement.nodes]
            facts["adaround"] = adaround(pristine, model, layers, calibrated.replay, o.adaround_samples, o.adaround_iterations, o.adaround_seconds, ctx.log).facts()
            facts["bias_correction"] = "skipped: adaround fits each layer's rounding to its output (bias correction after it measured worse on EfficientNet-Lite0)"
        elif (o.bias_correction != "off" or o.scale_search) and tensors and calibrated.replay is None:
            facts["bias_correction"] = "skipped: the ranges came from a TensorRT cache, there is no data to measure on"
        elif o.bias_correction != "off" and pristine is not None and tensors:
            layers = [pristine.graph.node[n.index].output[0] for n in placement.graphs[0].placement.nodes]
            facts["bias_correction"] = correct_biases(pristine, model, layers, ranks, calibrated.replay, o.bias_correction == "all", ctx.log).facts()
        facts.update(self._facts(placement, inserted))
        ctx.log.info("qdq: %d nodes quantized (%d inside If/Loop/Scan bodies), %d activations, %d weights; %d candidates left float",
                     len(placement.nodes), placement.in_subgraphs(), len(scales), len(inserted.weights), len(placement.refused))
        return PassResult(model, True, facts=facts, refused=placement.refused)

    @staticmethod
    def _upgrade(model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, dict[str, int]]:
        """Per-channel Q/DQ needs opset >= 13: the model converted there first (the opset pass's conversion)."""
        opset = opset_version(model) or 0
        if opset == 0:
            raise PassRefused(f"per-channel Q/DQ needs opset >= {MIN_OPSET}, the model imports no default-domain opset")
        try:
            converted, change = upgrade_opset(model, MIN_OPSET)
        except OpsetConversionFailed as exc:
            raise PassRefused(f"per-channel Q/DQ needs opset >= {MIN_OPSET}, the model has opset {opset} and converting it failed: {exc.details()}; "
                              f"replace those nodes in the export or run -p opset{{target={MIN_OPSET}}},qdq once they convert") from exc
        ctx.log.info("qdq: the model has opset %d; converted to opset %d first (per-channel Q/DQ needs %d)", change.from_opset, change.to_opset, MIN_OPSET)
        return converted, change.summary()

    @staticmethod
    def _scales(placement: ModelPlan, amax: dict[str, float], not_reached: set[str]) -> dict[str, float]:
        """Scales of the activations; nodes reading one that calibration never saw, or saw only as 0, stay float."""
        def why(t: str) -> str:
            if t in not_reached:
                return f"activation '{t}' never ran during calibration (a branch or loop body no sample reached): no range"
            return f"activation '{t}' was 0 on every calibration sample (no scale)"

        zero = {t for t, a in amax.items() if a <= 0.0}
        bad = {n.name: why(t) for n in placement.nodes for _, t in n.activations if t in zero}
        placement.drop(set(bad), bad)
        used = placement.activation_tensors()
        return {t: scale_of(amax[t]) for t in used}

    @staticmethod
    def _facts(placement: ModelPlan, inserted: Inserted) -> dict:
        facts = {
            "quantized_nodes": len(placement.nodes),
            "quantized_ops": dict(Counter(n.op_type for n in placement.nodes)),
            "nodes": [n.name for n in placement.nodes],
            "activation_scales": inserted.activation_scales,
            "weights": inserted.weights,
            "removed_constants": inserted.removed_constants,
            "already_quantized_inputs": placement.already_quantized,
        }
        if placement.in_subgraphs():
            facts["quantized_in_subgraphs"] = placement.in_subgraphs()
        return facts

    def _keep_qat(self, model: onnx.ModelProto, existing: list[str], ctx: PassContext) -> PassResult:
        facts = {"qat": True, "qdq_nodes": len(existing)}
        if self.options.qat_check:
            problems = qat_problems(model)
            if problems:
                more = f" (and {len(problems) - _LISTED} more)" if len(problems) > _LISTED else ""
                raise PassRefused(f"the model already holds Q/DQ and TensorRT needs zero points of 0 and positive finite scales: {'; '.join(problems[:_LISTED])}{more}; fix the export or pass qdq{{qat_check=false}}")
            facts["qat_check"] = "zero points 0, scales finite and positive"
        ctx.log.info("qdq: the model already holds Q/DQ (%d nodes, e.g. %s); kept as it is", len(existing), existing[0])
        return PassResult(model, False, facts=facts, refused=[f"the model already holds Q/DQ on activations ({len(existing)} nodes, e.g. {existing[0]}): kept as it is, no double quantization"])
