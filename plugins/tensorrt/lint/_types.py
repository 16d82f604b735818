"""TensorRT lint rules for element types and versions: int64, double, dtype, uint8, opset, ir-version."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import TensorProto

from converter import lazy_weights
from converter.backend_api import Finding
from converter.plugins.tensorrt.lint import _ops as ops
from converter.plugins.tensorrt.lint._context import (
    ERROR,
    WARNING,
    LintContext,
    constant_value,
    few,
    finding,
    type_name,
    version_text,
)
from converter.plugins.tensorrt.lint._ops import Version

# ------------------------------------------------------------------------------------------ type rules

def _int64_out_of_range(values: np.ndarray) -> np.ndarray:
    """int64 values outside int32, except the extremes exporters use as 'to the end' markers (|v| >= 2**62)."""
    info = np.iinfo(np.int32)
    v = values.ravel()
    return v[((v > info.max) | (v < info.min)) & (np.abs(v.astype(np.float64)) < 2.0**62)]


def _int64_constants(ctx: LintContext) -> Iterator[tuple[str, np.ndarray]]:
    for name, tensor in ctx.initializers.items():
        if tensor.data_type == TensorProto.INT64:
            yield name, lazy_weights.to_array(tensor)
    for name, ref in ctx.constant_nodes.items():
        value = constant_value(ref)
        if value is not None and value.dtype == np.int64:
            yield name, value


def check_int64(ctx: LintContext) -> Iterable[Finding]:
    """Before TensorRT 9.0, INT64 tensors are cast to INT32, and out-of-range values are clamped.

    TensorRT 8.x: "Your ONNX model has been generated with INT64 weights, while TensorRT does not natively
    support INT64. Attempting to cast down to INT32", values clamped "to +-INT_MAX" (operators.md for 8.x;
    onnx/tensorflow-onnx#883). Since 9.0 "The ONNX parser no longer automatically casts INT64 to INT32"
    (onnx/onnx-tensorrt docs/Changelog.md, 9.0 EA), so this rule is silent for TensorRT >= 9 and by default.
    """
    if ctx.trt is None or ctx.trt >= ops.INT64_NATIVE_SINCE:
        return
    casts = []
    for name, values in _int64_constants(ctx):
        bad = _int64_out_of_range(values)
        if bad.size:
            yield finding("int64", ERROR, name, f"INT64 constant has {bad.size} value(s) outside INT32 (e.g. {bad[0]}); "
                           f"TensorRT {version_text(ctx.trt)} clamps them when casting to INT32")
        else:
            casts.append(name)
    if casts:
        yield finding("int64", WARNING, "model", f"{len(casts)} INT64 constant(s) will be cast to INT32: {few(casts)}")
    for vi in [*ctx.graph_inputs(), *ctx.model.graph.output]:
        if vi.type.tensor_type.elem_type == TensorProto.INT64:
            yield finding("int64", WARNING, vi.name,
                           f"INT64 graph input/output becomes an INT32 binding in TensorRT {version_text(ctx.trt)}")


def check_double(ctx: LintContext) -> Iterable[Finding]:
    """DOUBLE tensors are cast down to FLOAT.

    "There is limited support for DOUBLE type. TensorRT will attempt to cast DOUBLE down to FLOAT, clamping
    values to +-FLT_MAX if necessary" (onnx/onnx-tensorrt docs/operators.md).
    """
    for vi in [*ctx.graph_inputs(), *ctx.model.graph.output]:
        if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
            yield finding("double", WARNING, vi.name, "DOUBLE graph input/output: TensorRT casts it to FLOAT")
    io = {vi.name for vi in [*ctx.graph_inputs(), *ctx.model.graph.output]}
    inner = sorted(n for n in set(ctx.types) | set(ctx.initializers) | set(ctx.constant_nodes)
                   if n not in io and ctx.elem_type(n) == TensorProto.DOUBLE)
    if inner:
        yield finding("double", WARNING, "model", f"{len(inner)} DOUBLE tensor(s) will be computed as FLOAT: {few(inner)}")


def _producer_label(ctx: LintContext, name: str) -> str:
    producer = ctx.producers.get(name)
    return producer.label if producer is not None else name


def check_dtype(ctx: LintContext) -> Iterable[Finding]:
    """Every tensor must have an element type TensorRT represents.

    "TensorRT supports the following ONNX data types: DOUBLE, FLOAT32, FLOAT16, BFLOAT16, FP8, FP4, INT32,
    INT64, INT8, INT4, UINT8, and BOOL" (onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15); an input of
    another type fails with "Failed to convert ONNX date type to TensorRT data type" (ModelImporter.cpp).
    """
    names = sorted(set(ctx.types) | set(ctx.initializers))
    for name in names:
        t = ctx.elem_type(name)
        if t and t not in ops.TENSOR_TYPES:
            yield finding("dtype", ERROR, _producer_label(ctx, name),
                           f"tensor {name!r} is {type_name(t)}, which TensorRT does not support")


def check_uint8(ctx: LintContext) -> Iterable[Finding]:
    """UINT8 is allowed only for network inputs/outputs, constants and Q/DQ.

    "TensorRT does not support UINT8 types for intermediate tensors" unless the DLA-only UINT8 quantization
    flag is set (onnx/onnx-tensorrt ModelImporter.cpp, parseNode); operators.md: "UINT8 is only supported as
    network input or output tensor types".
    """
    outputs = {vi.name for vi in ctx.model.graph.output}
    for ref in ctx.nodes:
        if ref.is_onnx("Constant", "QuantizeLinear"):
            continue
        for name in ref.node.output:
            if name and name not in outputs and ctx.elem_type(name) == TensorProto.UINT8:
                yield finding("uint8", ERROR, ref,
                               f"produces the intermediate UINT8 tensor {name!r}; cast to INT32 or FLOAT instead")


# ------------------------------------------------------------------------------------- version rules

def _opset_range(trt: Version | None) -> tuple[int, int, int, str]:
    """(min, surely-supported max, possibly-supported max, source) for a TensorRT version."""
    table = ops.OPSET_RANGES
    if trt is None:
        version, lo, hi, source = table[-1]
        return lo, hi, hi, source
    known = [row for row in table if row[0] <= trt]
    later = [row for row in table if row[0] > trt]
    if not known:
        version, lo, hi, source = table[0]
        return lo, hi, hi, source
    version, lo, hi, source = known[-1]
    return lo, hi, (later[0][2] if later and version != trt else hi), source


def check_opset(ctx: LintContext) -> Iterable[Finding]:
    """The default-domain opset must be in the parser's documented range.

    Ranges per version: onnx/onnx-tensorrt docs/operators.md ("TensorRT 10.0 supports operators in the
    inclusive range of opset 9 to opset 20", 10.15: "opset 9 to opset 24") and NVIDIA/TensorRT release v11.5
    ("Added support for ONNX opset 25"); see tensorrt_ops.OPSET_RANGES. Between two documented versions an
    opset above the older one's maximum is a warning, not an error: the versions in between are undocumented.
    """
    opset = ctx.default_opset()
    if opset is None:
        return
    lo, sure, maybe, source = _opset_range(ctx.trt)
    which = f"TensorRT {version_text(ctx.trt)}" if ctx.trt else "the newest documented TensorRT"
    if opset < lo or opset > maybe:
        yield finding("opset", ERROR, "model", f"opset {opset} is outside {which}'s range {lo}..{maybe} ({source}); "
                       "convert it with onnx.version_converter")
    elif opset > sure:
        yield finding("opset", WARNING, "model", f"opset {opset} is above {sure}, the last documented maximum before "
                       f"{which} ({source}); it may not be supported")


def _ir_of(release: str) -> int:
    """The IR version of an ONNX release (onnx.helper.VERSION_TABLE)."""
    for name, ir, *_ in onnx.helper.VERSION_TABLE:
        if name == release:
            return ir
    raise KeyError(f"ONNX release {release} is not in onnx.helper.VERSION_TABLE")


def _parser_ir(trt: Version | None) -> tuple[int, str]:
    """The newest IR version the parser of ``trt`` can be built with, and the source of that fact.

    Between two documented versions the later one's ONNX bounds it, so only a model newer than both warns.
    """
    table = ops.PARSER_ONNX_RELEASES
    known = [row for row in table if trt is None or row[0] <= trt]
    later = [row for row in table if trt is not None and row[0] > trt]
    if known and (not later or known[-1][0] == trt):
        return _ir_of(known[-1][1]), known[-1][2]
    bound = later[0] if later else table[-1]
    return _ir_of(bound[1]), bound[2]


def check_ir_version(ctx: LintContext) -> Iterable[Finding]:
    """A model IR version newer than the ONNX the parser was built with draws a parser warning.

    "WARNING: ONNX model has a newer ir_version (...) than this parser was built against" (onnx/onnx-tensorrt
    ModelImporter.cpp / main.cpp); the parser still tries. The ONNX each version is built with comes from the
    parser changelog and release notes (tensorrt_ops.PARSER_ONNX_RELEASES); IR versions from
    onnx.helper.VERSION_TABLE.
    """
    max_ir, source = _parser_ir(ctx.trt)
    if ctx.model.ir_version > max_ir:
        which = f"TensorRT {version_text(ctx.trt)}" if ctx.trt else "the newest documented TensorRT"
        yield finding("ir-version", WARNING, "model", f"IR version {ctx.model.ir_version} is newer than IR {max_ir} of the "
                       f"ONNX {which}'s parser is built with ({source}); re-save with an older onnx if parsing fails")
