"""Build passes from pipeline text and run them in order, checking after each one.

After every pass the model must pass the ONNX checker with full (strict) shape
inference; with verification on, the model is run on ONNX Runtime after each
pass and compared with the input model's outputs, so the first pass that breaks
accuracy is named.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from converter.compare import DEFAULT_TOLERANCES, Tolerance, compare
from converter.errors import ConverterError, ModelError, PassError, VerifyDrift, describe_exception
from converter.feeds import Feeds
from converter.graph_info import histogram_delta, node_count, op_histogram
from converter.model_io import PROTOBUF_LIMIT, write_model
from converter.options import build_options, options_as_dict
from converter.ort_session import make_session, run_session
from converter.pass_api import Pass, PassContext, Precision
from converter.pipeline_text import Step
from converter.registry import PassRegistry
from converter.report import PassRecord, PipelineReport

log = logging.getLogger("converter.pass_manager")

_PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


def build_passes(steps: list[Step], registry: PassRegistry) -> list[Pass]:
    passes = []
    for step in steps:
        cls = registry.get(step.name).cls
        options = build_options(cls.Options, step.options, f"pass '{step.name}'")
        passes.append(cls(options))
    return passes


def check_model(model: onnx.ModelProto) -> None:
    """The ONNX checker with strict shape inference; raises onnx's errors."""
    if model.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(model, full_check=True)
        return
    with tempfile.TemporaryDirectory(prefix="converter-check-") as tmp:
        path = Path(tmp) / "model.onnx"
        write_model(model, path, external_data=True)
        onnx.checker.check_model(str(path), full_check=True)


def _check_error_text(exc: Exception) -> str:
    return describe_exception(exc, 400)


def check_input_model(model: onnx.ModelProto, name: str) -> None:
    try:
        check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise ModelError(f"input model {name} fails the ONNX checker: {_check_error_text(exc)}; fix the export or pass --no-check") from exc


@dataclass
class VerifySpec:
    """Verification: feeds to run, tolerances per precision, batch sizes for batch-changing passes."""

    feeds: Feeds
    tolerances: dict[str, Tolerance]
    batch_sizes: tuple[int, ...] = (1, 2, 7)
    input_shapes: dict[str, tuple[int, ...]] | None = None


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _run(model: onnx.ModelProto, feeds: Feeds) -> dict:
    return run_session(make_session(model), feeds)


def run_pipeline(
    model: onnx.ModelProto,
    passes: list[Pass],
    *,
    check: bool = True,
    verify: VerifySpec | None = None,
    seed: int = 0,
    model_dir: str | None = None,
    calib_data: str | None = None,
    calib_random: bool = False,
) -> tuple[onnx.ModelProto, PipelineReport]:
    """Run ``passes`` in order on ``model`` (which may be changed in place)."""
    report = PipelineReport()
    reference = None
    if verify is not None:
        try:
            reference = _run(model, verify.feeds)
        except Exception as exc:
            raise ModelError(f"cannot run the input model on ONNX Runtime for --verify: {_check_error_text(exc)}") from exc
    precision: Precision = "fp32"
    ran: list[str] = []
    for p in passes:
        ctx = PassContext(log=logging.getLogger(f"converter.pass.{p.name}"), seed=seed, model_dir=model_dir, calib_data=calib_data, calib_random=calib_random)
        hist_before, nodes_before = op_histogram(model), node_count(model)
        before = _copy(model) if verify is not None and p.changes_batch else None
        start = time.perf_counter()
        try:
            result = p.run(model, ctx)
        except PassError:
            raise
        except ConverterError as exc:
            raise PassError(p.name, str(exc), ran) from exc
        except Exception as exc:
            raise PassError(p.name, f"internal error in the pass (a bug): {type(exc).__name__}: {describe_exception(exc)}", ran, internal=True) from exc
        seconds = time.perf_counter() - start
        model = result.model
        if check:
            try:
                check_model(model)
            except Exception as exc:
                raise PassError(p.name, f"it produced an invalid model: {_check_error_text(exc)}", ran) from exc
        record = PassRecord(
            name=p.name,
            options=options_as_dict(p.options),
            seconds=seconds,
            nodes_before=nodes_before,
            nodes_after=node_count(model),
            op_delta=histogram_delta(hist_before, op_histogram(model)),
            modified=result.modified,
            facts=result.facts,
            refused=result.refused,
        )
        if p.output_precision and _PRECISION_ORDER[p.output_precision] > _PRECISION_ORDER[precision]:
            precision = p.output_precision
        if verify is not None and reference is not None:
            try:
                outputs = _run(model, verify.feeds)
            except Exception as exc:
                raise PassError(p.name, f"ONNX Runtime cannot run its result: {_check_error_text(exc)}", ran) from exc
            record.verify = compare(outputs, reference, verify.tolerances.get(precision, DEFAULT_TOLERANCES[precision]), precision)
        if before is not None and result.modified and verify is not None:
            from converter.batch_verify import check_batch_stacking

            record.batch_check = check_batch_stacking(before, model, verify.batch_sizes, seed=seed, input_shapes=verify.input_shapes)
        report.records.append(record)
        ran.append(p.name)
        if record.batch_check is not None and not record.batch_check:
            raise VerifyDrift(
                f"--verify: after pass '{p.name}' batch N differs from N stacked batch-1 runs ({'; '.join(record.batch_check.failures()[:2])}); passes before it: {', '.join(ran[:-1]) or 'none'}",
                report,
            )
        if record.verify is not None and not record.verify:
            failed = ", ".join(record.verify.failed_outputs())
            raise VerifyDrift(
                f"--verify: pass '{p.name}' changed the outputs beyond {precision} tolerance ({failed}); passes before it: {', '.join(ran[:-1]) or 'none'}",
                report,
            )
    return model, report
