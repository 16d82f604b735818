"""Clean errors on bad input, and nothing left behind when a conversion fails.

These run the real flow, ``converter.convert_job.convert``, with a plugin set that holds only the
backend under test (so a third-party class needs no entry point), and map what escapes to the
exit code ``converter.cli.main`` would give: a :class:`~converter.errors.ConverterError` exits with
its own code, anything else is reported as a bug in converter (exit 4).

- ``bad_input[truncated_model]``: half of a valid .onnx through ``convert -b NAME``: it must end in
  exit 2 (the backend is built first: options, availability and ``preflight()`` must not crash).
- ``bad_input[unknown_op]``: a well-formed model whose op exists nowhere
  (``com.example.conformance::ConformanceNoSuchOp``) through emit, then load, then run: some step
  must raise a ConverterError with exit 1 (BackendError) or 2 (UsageError, ModelError): never
  another exception (exit 4, "a bug in converter"), never BackendUnavailable (exit 3 is for a missing
  dependency or device), never outputs.
- ``nothing_left_behind[emit_fails]``: ``convert`` of that model into a folder that does not exist yet:
  after the failure the output folder's parent holds nothing (no artifact, no staging folder, not
  even the folders the run created), nor does the working folder.
- ``nothing_left_behind[golden_mismatch]``: a successful emit of ``fp32_mlp`` whose golden check
  then fails (its reference outputs were altered): the same promise, once the backend has written
  and loaded everything.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter.backend_api import EmitContext
from converter.convert_job import ConvertRequest, GoldenFailed, convert
from converter.errors import BackendUnavailable, ConverterError
from converter.staging import staging_folder
from converter.testing.subject import Subject, exit_code_of, fail, listing, listing_text, raised, working_dir
from converter.testing.zoo import zoo_case

UNKNOWN_DOMAIN, UNKNOWN_OP = "com.example.conformance", "ConformanceNoSuchOp"


def unknown_op_model() -> onnx.ModelProto:
    """A well-formed model (the ONNX checker accepts it) whose only op no runtime implements."""
    node = helper.make_node(UNKNOWN_OP, ["x"], ["y"], name="no_such_op", domain=UNKNOWN_DOMAIN)
    graph = helper.make_graph([node], "unknown_op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(UNKNOWN_DOMAIN, 1)], producer_name="converter-conformance")
    model.ir_version = 8
    return model


def _convert(subject: Subject, model: Path, golden: Path | None = None) -> tuple[BaseException | None, Path, Path]:
    """``convert MODEL -b BACKEND -o <new folders>/model<suffix> [--golden CASE]``; returns what it raised, the output root, the working folder."""
    root = subject.fresh_dir("convert")
    out_root, cwd = root / "out", root / "cwd"
    out_root.mkdir()
    cwd.mkdir()
    req = ConvertRequest(model=model, backend=subject.backend_text(), output=out_root / "new" / "deeper" / f"model{subject.cls.suffix}", golden=golden)
    with working_dir(cwd):
        try:
            convert(req, subject.plugins())
        except Exception as exc:  # noqa: BLE001 - what escapes convert is the finding (non-ConverterError: exit 4)
            return exc, out_root, cwd
    return None, out_root, cwd


def _left_behind(out_root: Path, cwd: Path, what: str) -> None:
    left = [*listing(out_root), *(f"<working folder>/{n}" for n in listing(cwd))]
    if left:
        raise fail(f"after {what}, files were left behind: {listing_text(left)}; write only into ctx.staging (convert removes it on failure)")


def check_bad_input_truncated(subject: Subject) -> None:
    subject.require_available()
    data = zoo_case("fp32_mlp").model_path.read_bytes()
    model = subject.fresh_dir("truncated") / "truncated.onnx"
    model.write_bytes(data[: len(data) // 2])
    exc, out_root, cwd = _convert(subject, model)
    if exc is None:
        raise fail(f"convert -b {subject.name} accepted a truncated .onnx and wrote an artifact")
    if isinstance(exc, BackendUnavailable):
        raise fail(f"convert -b {subject.name} said the backend is unavailable (exit 3) though availability() is ok: {exc}")
    if exit_code_of(exc) != 2:
        raise fail(f"convert -b {subject.name} on a truncated .onnx ended with exit {exit_code_of(exc)}, not 2 (bad input): {raised(exc)}")
    _left_behind(out_root, cwd, "a failed conversion of a truncated model")


def _stage(what: str, model_text: str, fn: Any, *args: Any) -> tuple[Any, str | None]:
    """Run one step; (result, None) when it returned, (None, where) when it raised a clean ConverterError."""
    try:
        return fn(*args), None
    except BackendUnavailable as exc:
        raise fail(f"{what} raised BackendUnavailable (exit 3) for {model_text}: {exc}; exit 3 means a missing dependency or device: "
                   "raise converter.errors.BackendError (exit 1) or UsageError/ModelError (exit 2)") from exc
    except ConverterError as exc:
        return None, f"{what}: {type(exc).__name__} (exit {exc.exit_code}): {exc}"
    except Exception as exc:
        raise fail(f"{what} raised {raised(exc)} for {model_text}; convert reports an exception that is not a ConverterError as an internal error "
                   "(exit 4, 'a bug in converter'): raise converter.errors.BackendError (exit 1) or UsageError/ModelError (exit 2) with a message "
                   "that says what is not supported") from exc


def refusal(subject: Subject, model: onnx.ModelProto, model_text: str, feeds: dict[str, np.ndarray]) -> str | None:
    """Emit (in a real staging folder), load, run ``model``: where it was refused with a ConverterError, None when it ran.

    Any other exception, or BackendUnavailable, fails the calling check."""
    backend = subject.backend()
    folder = subject.fresh_dir("refusal")
    with working_dir(folder), staging_folder(folder / "out") as staging:
        ctx = EmitContext(staging=staging, file_name=f"model{subject.cls.suffix}", log=logging.getLogger(f"converter.backend.{subject.name}"))
        artifact, where = _stage("emit", model_text, backend.emit, model, ctx)
        if where is None:
            runner, where = _stage("load", model_text, subject.backend().load, artifact)
            if where is None:
                _, where = _stage("run", model_text, runner.run, feeds)
    return where


def check_bad_input_unknown_op(subject: Subject) -> None:
    subject.require_available()
    text = f"a model with an op that exists nowhere ({UNKNOWN_DOMAIN}::{UNKNOWN_OP})"
    if refusal(subject, unknown_op_model(), text, {"x": np.ones((2, 4), np.float32)}) is None:
        raise fail(f"the backend emitted, loaded and ran {text} and returned outputs; it must refuse it with a BackendError")


def check_nothing_left_emit_fails(subject: Subject) -> None:
    subject.require_available()
    model = subject.fresh_dir("unknown-op-src") / "unknown_op.onnx"
    onnx.save_model(unknown_op_model(), str(model))
    exc, out_root, cwd = _convert(subject, model)
    if exc is None:
        raise fail(f"convert -b {subject.name} converted a model whose op exists nowhere ({UNKNOWN_DOMAIN}::{UNKNOWN_OP}); see bad_input[unknown_op]")
    _left_behind(out_root, cwd, f"a conversion that failed ({raised(exc)})")
    if sorted(p.name for p in model.parent.iterdir()) != [model.name]:
        raise fail(f"files appeared beside the input model: {listing_text([p.name for p in model.parent.iterdir() if p != model])}")


def _altered_case(subject: Subject) -> Path:
    case = subject.fresh_dir("golden-mismatch") / "fp32_mlp"
    shutil.copytree(zoo_case("fp32_mlp").path, case)
    for f in sorted(case.glob("test_data_set_*/output_*.pb")):
        t = onnx.TensorProto()
        t.ParseFromString(f.read_bytes())
        wrong = numpy_helper.to_array(t)[..., ::-1] + np.float32(0.5)  # softmax rows reversed and shifted: no backend matches this
        f.write_bytes(numpy_helper.from_array(np.ascontiguousarray(wrong), t.name).SerializeToString())
    return case


def check_nothing_left_golden_mismatch(subject: Subject) -> None:
    subject.require_available()
    case = _altered_case(subject)
    before = listing(case)
    exc, out_root, cwd = _convert(subject, case / "model.onnx", golden=case)
    if exc is None:
        raise fail("the golden check passed against deliberately wrong reference outputs; cannot check the failure path")
    if not isinstance(exc, GoldenFailed):
        raise fail(f"convert -b {subject.name} of zoo case 'fp32_mlp' failed before its golden check: {raised(exc)} (see emit_load_run[fp32_mlp])")
    _left_behind(out_root, cwd, "a conversion whose golden check failed")
    if listing(case) != before:
        raise fail(f"files appeared beside the input model: {listing_text(sorted(set(listing(case)) - set(before)))}")
