"""TensorRT-compatibility lint: what TensorRT's ONNX parser will reject or run slowly, found without TensorRT.

Pure ONNX; runs anywhere. ``lint(model, trt_version=...)`` runs every rule in :data:`RULES` over one
shape-inferred copy of the model (the input is never modified) and returns :class:`Finding` objects, each
naming a node (or tensor, or "model"). Each rule is a small function whose docstring states the fact it
checks and where that fact comes from; the tables behind them live in :mod:`converter.plugins.tensorrt.lint._ops`.

``trt_version`` ("10.8", "10.8.0.43", ...) selects version-dependent facts (opset range, INT64, operators
added later). ``None`` means the newest TensorRT the tables document.

The rules live in :mod:`~converter.plugins.tensorrt.lint._qdq` (Q/DQ), :mod:`~converter.plugins.tensorrt.lint._types`
(element types, opset, IR version) and :mod:`~converter.plugins.tensorrt.lint._graph` (operators, shapes); what they
share (:class:`LintContext`, :class:`NodeRef`, version parsing) is :mod:`~converter.plugins.tensorrt.lint._context`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import onnx

from converter.backend_api import Finding
from converter.plugins.tensorrt.lint._context import LintContext
from converter.plugins.tensorrt.lint._graph import (
    check_dynamic_rank,
    check_hardcoded_batch,
    check_loop_scan,
    check_non_constant_weights,
    check_op_restriction,
    check_shape_inference,
    check_unsupported_op,
)
from converter.plugins.tensorrt.lint._qdq import check_qdq_axis, check_qdq_dtype, check_qdq_scale, check_zero_point
from converter.plugins.tensorrt.lint._types import (
    check_double,
    check_dtype,
    check_int64,
    check_ir_version,
    check_opset,
    check_uint8,
)

__all__ = ["RULES", "Rule", "lint"]


@dataclass(frozen=True)
class Rule:
    """One lint rule: a stable name, a one-line summary, and the check."""

    name: str
    summary: str
    check: Callable[[LintContext], Iterable[Finding]]


RULES: tuple[Rule, ...] = (
    Rule("opset", "default-domain opset inside the parser's documented range", check_opset),
    Rule("ir-version", "IR version not newer than the parser's ONNX", check_ir_version),
    Rule("unsupported-op", "operators TensorRT's ONNX parser does not import", check_unsupported_op),
    Rule("op-restriction", "supported operators with unsupported attributes", check_op_restriction),
    Rule("zero-point", "Q/DQ zero points must be constant zeros", check_zero_point),
    Rule("qdq-dtype", "Q/DQ must quantize to INT8, FP8, INT4 (weights) or FP4", check_qdq_dtype),
    Rule("qdq-scale", "Q/DQ scales must be positive build-time constants", check_qdq_scale),
    Rule("qdq-axis", "Q/DQ per-tensor, per-channel on the right axis, or one blocked axis", check_qdq_axis),
    Rule("int64", "INT64 tensors cast to INT32 (TensorRT < 9)", check_int64),
    Rule("double", "DOUBLE tensors cast to FLOAT", check_double),
    Rule("dtype", "element types TensorRT does not represent", check_dtype),
    Rule("uint8", "intermediate UINT8 tensors", check_uint8),
    Rule("hardcoded-batch", "dynamic-batch models with the batch baked into shape constants", check_hardcoded_batch),
    Rule("dynamic-rank", "tensors whose rank is unknown at build time", check_dynamic_rank),
    Rule("loop-scan", "Loop/Scan run as TensorRT loops", check_loop_scan),
    Rule("non-constant-weights", "Conv weights computed at run time", check_non_constant_weights),
    Rule("shape-inference", "ONNX shape inference must succeed for shape checks", check_shape_inference),
)


def lint(model: onnx.ModelProto, *, trt_version: str | None = None, rules: Sequence[Rule] = RULES) -> list[Finding]:
    """Check ``model`` against what TensorRT ``trt_version`` (default: newest documented) accepts.

    Works on a copy; the model passed in is not modified. Findings come rule by rule, in graph order.
    """
    ctx = LintContext.build(model, trt_version)
    return [finding for rule in rules for finding in rule.check(ctx)]
