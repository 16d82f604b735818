"""Build passes from pipeline text and run them in order, with instruments around each one.

What happens around a pass (the ONNX checker, timing, ``--verify``, the batch-stacking
proof) lives in :mod:`converter.instruments`; this module only runs passes, names the
pass that failed and those before it, and keeps the report.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

import onnx

from converter import lazy_weights, progress
from converter.errors import BackendUnavailable, ConverterError, ModelError, PassError, describe_exception
from converter.flags import PassInputs
from converter.instruments import Instrument, PipelineState, standard_instruments
from converter.onnx_calls import check_model
from converter.options import build_options, options_as_dict
from converter.pass_api import Pass, PassContext
from converter.pipeline_text import Step
from converter.registry import PassRegistry
from converter.report import PassRecord, PipelineReport
from converter.staging import SideFiles

log = logging.getLogger("converter.pass_manager")


def build_passes(steps: list[Step], registry: PassRegistry) -> list[Pass]:
    passes = []
    for step in steps:
        cls = registry.get(step.name).cls
        options = build_options(cls.Options, step.options, f"pass '{step.name}'")
        passes.append(cls(options))
    return passes


def check_input_model(model: onnx.ModelProto, name: str) -> None:
    try:
        check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise ModelError(f"input model {name} fails the ONNX checker: {describe_exception(exc, 400)}; fix the export or pass --no-check") from exc


def _run_one(p: Pass, model: onnx.ModelProto, ctx: PassContext, state: PipelineState):
    try:
        return p.run(model, ctx)
    except PassError:
        raise
    except ConverterError as exc:
        error = PassError(p.name, str(exc), state.ran)
        if isinstance(exc, BackendUnavailable):  # a missing dependency (--ray without Ray) stays exit 3
            error.exit_code = exc.exit_code
        raise error from exc
    except Exception as exc:
        raise PassError(p.name, f"internal error in the pass (a bug): {type(exc).__name__}: {describe_exception(exc)}", state.ran, internal=True) from exc


def run_pipeline(
    model: onnx.ModelProto,
    passes: list[Pass],
    *,
    instruments: Sequence[Instrument] | None = None,
    seed: int = 0,
    model_dir: str | None = None,
    inputs: PassInputs | None = None,
    side_files: SideFiles | None = None,
    spill: Path | None = None,
) -> tuple[onnx.ModelProto, PipelineReport]:
    """Run ``passes`` in order on ``model`` (which may be changed in place).

    ``instruments`` default to timing and the checker; ``inputs`` are the values of
    plugin-registered flags (``ctx.inputs``); ``side_files`` collects files passes want written
    besides the artifact (the caller commits them). ``spill`` (a file in the staging folder) takes
    the big tensors each pass leaves in memory, for models whose weights stay in their files
    (:func:`converter.lazy_weights.spill`).
    """
    side_files = side_files if side_files is not None else SideFiles()
    instruments = list(instruments) if instruments is not None else standard_instruments(check=True)
    state = PipelineState()
    if spill is not None:  # the caller's message stays as loaded (small); what passes grow goes with their copies
        model = lazy_weights.spill(model, spill, fresh=True)
    for inst in instruments:
        inst.before_pipeline(model, state)
    for p in passes:
        ctx = PassContext(log=logging.getLogger(f"converter.pass.{p.name}"), seed=seed, model_dir=model_dir, inputs=inputs or PassInputs(), side_files=side_files)
        with progress.step(f"pass {p.name}") as task:
            for inst in instruments:
                inst.before_pass(p, model, state)
            result = _run_one(p, model, ctx, state)
            if spill is not None:
                result.model = lazy_weights.spill(result.model, spill)
                gc.collect()  # a pass's dropped copies can sit in reference cycles: big ones must go now
            model = result.model
            record = PassRecord(name=p.name, options=options_as_dict(p.options), modified=result.modified, facts=result.facts, refused=result.refused)
            for inst in instruments:
                inst.after_pass(p, result, record, state)
            task.update(detail=f"{record.nodes_before} -> {record.nodes_after} nodes" if record.nodes_before else "")
        state.report.records.append(record)
        state.ran.append(p.name)
    return model, state.report
