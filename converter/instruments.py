"""What runs around every pass: the checker, timing and op counts, ``--verify``, the batch-stacking proof.

Like TVM's ``PassInstrument`` and onnx-ir's pre/post-condition checks: each instrument
gets ``before_pass`` and ``after_pass`` calls and decides by what a pass *declares*
(``Pass.effects``, ``Pass.output_precision``) whether it acts, never by its name.
An instrument that finds a problem raises a :class:`~converter.errors.ConverterError`;
the pass manager adds nothing to it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from converter import progress
from converter.batch_verify import check_batch_stacking
from converter.compare import DEFAULT_TOLERANCES, Tolerance, compare
from converter.errors import ModelError, PassError, VerifyDrift, describe_exception
from converter.feeds import Feeds
from converter.graph_info import histogram_delta, node_count, op_histogram
from converter.onnx_calls import check_model
from converter.ort_session import make_session, run_session
from converter.pass_api import Effect, Pass, PassResult, Precision
from converter.report import PassRecord, PipelineReport

_PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


@dataclass
class PipelineState:
    """What instruments share while a pipeline runs: the report, the passes run so far, the precision reached."""

    report: PipelineReport = field(default_factory=PipelineReport)
    ran: list[str] = field(default_factory=list)
    precision: Precision = "fp32"

    def before_text(self) -> str:
        return ", ".join(self.ran) or "none"


class Instrument:
    """Hooks around each pass. ``before_pipeline`` sees the input model once."""

    def before_pipeline(self, model: onnx.ModelProto, state: PipelineState) -> None:
        """Called once, before the first pass."""

    def before_pass(self, p: Pass, model: onnx.ModelProto, state: PipelineState) -> None:
        """Called before ``p`` runs on ``model``."""

    def after_pass(self, p: Pass, result: PassResult, record: PassRecord, state: PipelineState) -> None:
        """Called after ``p`` ran; ``record`` is what the report keeps about it (instruments fill it)."""


class Timing(Instrument):
    """Wall time, node count and op histogram before/after: the report's columns."""

    def before_pass(self, p: Pass, model: onnx.ModelProto, state: PipelineState) -> None:
        self._hist, self._nodes, self._start = op_histogram(model), node_count(model), time.perf_counter()

    def after_pass(self, p: Pass, result: PassResult, record: PassRecord, state: PipelineState) -> None:
        record.seconds = time.perf_counter() - self._start
        record.nodes_before, record.nodes_after = self._nodes, node_count(result.model)
        record.op_delta = histogram_delta(self._hist, op_histogram(result.model))


class Checker(Instrument):
    """After every pass: the ONNX checker with strict shape inference."""

    def after_pass(self, p: Pass, result: PassResult, record: PassRecord, state: PipelineState) -> None:
        try:
            check_model(result.model)
        except Exception as exc:
            raise PassError(p.name, f"it produced an invalid model: {describe_exception(exc, 400)}", state.ran) from exc


class PrecisionTracker(Instrument):
    """The lowest precision a pass produced so far: the tolerance later checks use."""

    def after_pass(self, p: Pass, result: PassResult, record: PassRecord, state: PipelineState) -> None:
        if p.output_precision and _PRECISION_ORDER[p.output_precision] > _PRECISION_ORDER[state.precision]:
            state.precision = p.output_precision


def _run(model: onnx.ModelProto, feeds: Feeds) -> dict:
    return run_session(make_session(model), feeds)


class Verify(Instrument):
    """``--verify``: outputs after each pass against the input model's, at the precision reached so far."""

    def __init__(self, feeds: Feeds, tolerances: dict[str, Tolerance] | None = None) -> None:
        self.feeds = feeds
        self.tolerances = tolerances or {}
        self.reference: dict | None = None

    def before_pipeline(self, model: onnx.ModelProto, state: PipelineState) -> None:
        try:
            with progress.step("verify: reference run"):
                self.reference = _run(model, self.feeds)
        except Exception as exc:
            raise ModelError(f"cannot run the input model on ONNX Runtime for --verify: {describe_exception(exc, 400)}") from exc

    def after_pass(self, p: Pass, result: PassResult, record: PassRecord, state: PipelineState) -> None:
        assert self.reference is not None
        try:
            with progress.step("verify"):
                outputs = _run(result.model, self.feeds)
        except Exception as exc:
            raise PassError(p.name, f"ONNX Runtime cannot run its result: {describe_exception(exc, 400)}", state.ran) from exc
        precision = state.precision
        record.verify = compare(outputs, self.reference, self.tolerances.get(precision, DEFAULT_TOLERANCES[precision]), precision)
        if not record.verify:
            state.report.records.append(record)
            raise VerifyDrift(
                f"--verify: pass '{p.name}' changed the outputs beyond {precision} tolerance ({', '.join(record.verify.failed_outputs())}); "
                f"passes before it: {state.before_text()}",
                state.report,
            )


class BatchStacking(Instrument):
    """After a pass with ``Effect.BATCH`` that changed the model: batch N equals N stacked batch-1 runs of its input."""

    def __init__(self, batch_sizes: Sequence[int] = (1, 2, 7), input_shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0) -> None:
        self.batch_sizes = tuple(batch_sizes)
        self.input_shapes = input_shapes
        self.seed = seed
        self._before: onnx.ModelProto | None = None

    def before_pass(self, p: Pass, model: onnx.ModelProto, state: PipelineState) -> None:
        self._before = None
        if Effect.BATCH in p.effects:
            self._before = onnx.ModelProto()
            self._before.CopyFrom(model)

    def after_pass(self, p: Pass, result: PassResult, record: PassRecord, state: PipelineState) -> None:
        if self._before is None or not result.modified:
            return
        with progress.step("verify: batch stacking"):
            record.batch_check = check_batch_stacking(self._before, result.model, self.batch_sizes, seed=self.seed, input_shapes=self.input_shapes)
        self._before = None
        if not record.batch_check:
            state.report.records.append(record)
            raise VerifyDrift(
                f"--verify: after pass '{p.name}' batch N differs from N stacked batch-1 runs ({'; '.join(record.batch_check.failures()[:2])}); "
                f"passes before it: {state.before_text()}",
                state.report,
            )


def standard_instruments(*, check: bool, verify: Verify | None = None, batch: BatchStacking | None = None) -> list[Instrument]:
    """The instruments ``convert`` runs: timing and precision always, the checker unless ``--no-check``, ``--verify``'s two."""
    out: list[Instrument] = [Timing(), PrecisionTracker()]
    if check:
        out.append(Checker())
    out += [i for i in (verify, batch) if i is not None]
    return out
