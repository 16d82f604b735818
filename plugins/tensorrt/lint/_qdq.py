"""TensorRT lint rules for Q/DQ (QuantizeLinear/DequantizeLinear): zero-point, qdq-dtype, qdq-scale, qdq-axis."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
from onnx import TensorProto

from converter.backend_api import Finding, Severity
from converter.plugins.tensorrt.lint import _ops as ops
from converter.plugins.tensorrt.lint._context import ERROR, WARNING, Dim, LintContext, NodeRef, finding, type_name

# ------------------------------------------------------------------------------------------ Q/DQ rules

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def qdq_nodes(ctx: LintContext) -> Iterator[NodeRef]:
    return (ref for ref in ctx.nodes if ref.is_onnx(*QDQ_OPS))


def check_zero_point(ctx: LintContext) -> Iterable[Finding]:
    """Q/DQ zero points must be all zeros.

    TensorRT quantization is symmetric: "Non-zero zero point is not supported" (onnx/onnx-tensorrt
    onnxOpImporters.cpp, QuantDequantLinearHelper; operators.md: "`x_zero_point` must be zero",
    "`y_zero_point` must be 0"). The zero point must also be a build-time constant ("The subgraph which
    terminates with the scale tensor must be a build-time constant. The same restrictions apply to the
    zeroPt", TensorRT Python API docs, IQuantizeLayer).
    """
    for ref in qdq_nodes(ctx):
        zp = ref.input(2)
        if not zp:
            continue
        value = ctx.const(zp)
        if value is None:
            if zp not in ctx.static:
                yield finding("zero-point", ERROR, ref,
                               f"zero point {zp!r} is computed at run time; TensorRT needs a constant of zeros")
            continue
        values = np.asarray(value).astype(np.float64).ravel()
        nonzero = values[values != 0]
        if nonzero.size:
            yield finding(
                "zero-point", ERROR, ref,
                f"zero point {zp!r} has {nonzero.size} non-zero value(s) (e.g. {nonzero[0]:g}); TensorRT supports only "
                "symmetric quantization (zero point 0)",
            )


def _quant_type(ctx: LintContext, ref: NodeRef) -> tuple[int | None, str]:
    """The quantized element type of a Q/DQ node and where it was read from."""
    if ref.input(2):
        return ctx.elem_type(ref.input(2)), "zero point"
    output_dtype = ref.attr("output_dtype", 0)
    if ref.op == "QuantizeLinear" and isinstance(output_dtype, int) and output_dtype:
        return output_dtype, "output_dtype"
    if ref.op == "DequantizeLinear":
        return ctx.elem_type(ref.input(0)), "input"
    return None, "implicit"


def _on_weights(ctx: LintContext, ref: NodeRef) -> bool:
    """The Q/DQ works on a build-time constant (weights), not on an activation."""
    return ref.input(0) in ctx.static


def check_qdq_dtype(ctx: LintContext) -> Iterable[Finding]:
    """Q/DQ must quantize to INT8, FP8 (E4M3), INT4 or FP4; INT4 only for weights.

    "TensorRT only allows FP8, INT8, INT4, and FP4 quantization"; a UINT8 zero point is replaced by INT8
    ("Defaulting to INT8 instead"), any other zero-point type too ("TensorRT will use INT8 instead"), and a
    DequantizeLinear with a UINT8 input is rejected (onnx/onnx-tensorrt onnxOpImporters.cpp,
    QuantDequantLinearHelper). Without a zero point ONNX quantizes to UINT8 while TensorRT uses INT8 ("ONNX
    default is UINT8, TRT will default to INT8"), so results differ for negative inputs. INT4 is
    "weight-only quantization" (TensorRT docs, Working with Quantized Types). INT32-quantized biases, which
    onnxruntime's QDQ quantizer emits by default, fail TensorRT's conversion (microsoft/onnxruntime#17738).
    """
    for ref in qdq_nodes(ctx):
        if ref.op == "DequantizeLinear" and _fed_by_quantize(ctx, ref):
            continue  # reported at the QuantizeLinear
        qtype, source = _quant_type(ctx, ref)
        if source == "implicit":
            yield finding("qdq-dtype", WARNING, ref, "no zero point: ONNX quantizes to UINT8 here, TensorRT to INT8; "
                           "add an INT8 zero point of 0 so both agree")
            continue
        if qtype is None:
            continue
        if qtype == TensorProto.UINT8:
            yield finding("qdq-dtype", ERROR, ref, f"UINT8 quantization (from the {source}): TensorRT rejects UINT8 "
                           "dequantization and quantizes to INT8 instead; use INT8 with zero point 0")
        elif qtype == TensorProto.INT32:
            yield finding("qdq-dtype", ERROR, ref, "INT32 (bias) quantization: TensorRT has no INT32 quantized type; keep "
                           "biases in float (onnxruntime quantize_static: extra_options QuantizeBias=False)")
        elif qtype not in ops.QUANTIZED_TYPES:
            yield finding("qdq-dtype", ERROR, ref, f"{type_name(qtype)} quantization (from the {source}): TensorRT "
                           f"quantizes only to {', '.join(ops.QUANTIZED_TYPES.values())}")
        elif qtype in ops.WEIGHT_ONLY_TYPES and not _on_weights(ctx, ref):
            yield finding("qdq-dtype", ERROR, ref, f"{ops.QUANTIZED_TYPES[qtype]} on an activation: TensorRT supports it "
                           "for weights only")


def _fed_by_quantize(ctx: LintContext, ref: NodeRef) -> bool:
    producer = ctx.producers.get(ref.input(0))
    return producer is not None and producer.is_onnx("QuantizeLinear")


def check_qdq_scale(ctx: LintContext) -> Iterable[Finding]:
    """Q/DQ scales must be build-time constants with strictly positive values.

    "The subgraph which terminates with the scale tensor must be a build-time constant" (TensorRT Python
    API docs, IQuantizeLayer); "Scale coefficients must all be positive" (onnx/onnx-tensorrt
    onnxOpImporters.cpp, QuantDequantLinearHelper).
    """
    for ref in qdq_nodes(ctx):
        scale = ref.input(1)
        if scale not in ctx.static:
            yield finding("qdq-scale", ERROR, ref,
                           f"scale {scale!r} is computed at run time; TensorRT needs a build-time constant")
            continue
        value = ctx.const(scale)
        if value is not None and np.any(np.asarray(value).astype(np.float64) <= 0):
            yield finding("qdq-scale", ERROR, ref, f"scale {scale!r} has values <= 0; TensorRT needs all scales > 0")


def _axis(ctx: LintContext, ref: NodeRef, rank: int) -> int:
    opset = ctx.default_opset() or 13
    axis = int(ref.attr("axis", 1 if opset >= 13 else 0))  # type: ignore[call-overload]
    return axis + rank if axis < 0 else axis


def _expected_weight_axis(ctx: LintContext, consumer: NodeRef, index: int) -> tuple[int, Severity, str] | None:
    """(axis, severity, why) a per-channel DequantizeLinear feeding ``consumer`` at ``index`` should use."""
    if index != 1:
        return None
    if consumer.is_onnx("Conv"):
        return 0, ERROR, "Conv weights are quantized per output channel K, axis 0"
    if consumer.is_onnx("ConvTranspose"):
        return 0, ERROR, ("ConvTranspose weights are quantized along axis 0; TensorRT does not support "
                          "per-output-channel (axis 1) quantization for deconvolution (NVIDIA/TensorRT#2380)")
    if consumer.is_onnx("Gemm"):
        axis = 0 if consumer.attr("transB", 0) else 1
        return axis, WARNING, f"Gemm weights (transB={consumer.attr('transB', 0)}) are quantized per output feature, axis {axis}"
    if consumer.is_onnx("MatMul"):
        shape = ctx.shape(consumer.input(1))
        if shape is not None and len(shape) == 2:
            return 1, WARNING, "MatMul weights [K, N] are quantized per output feature N, axis 1"
    return None


def _per_channel_findings(ctx: LintContext, ref: NodeRef, in_shape: list[Dim], size: int | None) -> Iterator[Finding]:
    axis = _axis(ctx, ref, len(in_shape))
    if not 0 <= axis < len(in_shape):
        yield finding("qdq-axis", ERROR, ref, f"axis {ref.attr('axis', 1)} is out of range for a rank-{len(in_shape)} input")
        return
    k = in_shape[axis]
    if isinstance(k, int) and size is not None and k != size:
        yield finding("qdq-axis", ERROR, ref, f"{size} scales for axis {axis} of size {k}; TensorRT needs one scale per channel")
    if not _on_weights(ctx, ref):
        yield finding("qdq-axis", WARNING, ref, f"per-channel (axis {axis}) quantization of an activation: TensorRT "
                       "quantizes activations per tensor, so this Q/DQ is unlikely to fuse and may run as a separate layer")
        return
    if ref.op != "DequantizeLinear":
        return
    for consumer, index in ctx.consumers.get(ref.node.output[0], []):
        expected = _expected_weight_axis(ctx, consumer, index)
        if expected is not None and expected[0] != axis:
            yield finding("qdq-axis", expected[1], ref, f"per-channel axis {axis} feeding {consumer.label}: {expected[2]}")


def _blocked_findings(ref: NodeRef, in_shape: list[Dim], scale_shape: list[Dim]) -> Iterator[Finding]:
    if not all(isinstance(d, int) and d > 0 for d in [*in_shape, *scale_shape]):
        return
    if any(i % s for i, s in zip(in_shape, scale_shape)):  # type: ignore[operator]
        yield finding("qdq-axis", ERROR, ref,
                       f"scale shape {scale_shape} does not divide input shape {in_shape} into whole blocks")
        return
    blocked = [i for i, (a, b) in enumerate(zip(in_shape, scale_shape)) if a // b != 1]  # type: ignore[operator]
    if len(blocked) != 1:
        yield finding("qdq-axis", ERROR, ref,
                       f"blocked quantization over axes {blocked}: TensorRT allows exactly one blocked axis")


def check_qdq_axis(ctx: LintContext) -> Iterable[Finding]:
    """Q/DQ granularity: per-tensor, per-channel along the right axis, or blocked along one axis.

    The scale must be a scalar (per-tensor), 1-D with one value per channel of the axis ("The number of
    scales is not equal to the number of output channels"), or of the input's rank with "Only a single
    blocking dimension"; any other rank is "Invalid rank for the scale tensor" (onnx/onnx-tensorrt
    onnxOpImporters.cpp, QuantDequantLinearHelper). Weights are quantized per output channel: Conv axis 0;
    ConvTranspose axis 0, TensorRT has no per-output-channel deconvolution quantization (NVIDIA/TensorRT
    #2380, #1694); Gemm/MatMul along the output features (the project DESIGN.md, Precision). Activations are
    quantized per tensor (TensorRT docs, Explicit Quantization; DESIGN.md).
    """
    for ref in qdq_nodes(ctx):
        scale_value = ctx.const(ref.input(1))
        scale_shape = list(scale_value.shape) if scale_value is not None else ctx.shape(ref.input(1))
        in_shape = ctx.shape(ref.input(0))
        if scale_shape is None:
            continue
        static = [d for d in scale_shape if isinstance(d, int)]
        size = math.prod(static) if len(static) == len(scale_shape) else None
        if size == 1:
            continue
        if len(scale_shape) == 1 and in_shape is not None:
            yield from _per_channel_findings(ctx, ref, in_shape, size)
        elif in_shape is not None and len(scale_shape) == len(in_shape):
            yield from _blocked_findings(ref, in_shape, scale_shape)
        elif in_shape is not None:
            yield finding("qdq-axis", ERROR, ref, f"rank-{len(scale_shape)} scale for a rank-{len(in_shape)} input: TensorRT "
                           "takes a scalar, a 1-D per-channel scale or a blocked scale of the input's rank")
