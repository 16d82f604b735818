"""The export flow: load the module → export → repair/check the opset → verify against torch → write → golden.

Everything is staged in a temporary folder beside the output and renamed into place only after
the ONNX checker and the torch-vs-ONNX Runtime check pass (``keep_failed`` writes it anyway),
so a failed export leaves nothing behind. The golden case is recorded after the model is in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converter import progress
from converter.backend_api import TensorSpec
from converter.compare import DEFAULT_TOLERANCES, Tolerance
from converter.errors import CheckFailed, UsageError
from converter.golden import MANIFEST, GoldenCase
from converter.graph_info import graph_inputs, graph_outputs
from converter.model_io import ensure_not_input, write_model
from converter.staging import commit_files, staging_folder
from converter.torch_export import dynamic
from converter.torch_export.dynamic import DEFAULT_BATCHES, DynamicAxes, check_points, check_sizes, given_sizes, parse_dynamic, parse_sizes
from converter.torch_export.exporter import Exported, export
from converter.torch_export.golden_case import record_torch_case
from converter.torch_export.inputs import InputSpec, parse_inputs
from converter.torch_export.opset_check import OpsetReport, check_file, fix_split_num_outputs, opset_report
from converter.torch_export.spec import Spec, load_model, parse_spec
from converter.torch_export.torch_env import require_torch
from converter.torch_export.verify import VerifyReport, verify

log = logging.getLogger("converter.torch_export")

# torch vs ONNX Runtime in fp32: the golden fp32 policy (elementwise atol 1e-5 x output scale,
# rtol 1e-4, cosine >= 0.99999, top-1 agreement 1.0 on class scores).
EXPORT_TOLERANCE: Tolerance = DEFAULT_TOLERANCES["fp32"]


@dataclass
class ExportRequest:
    spec: str
    inputs: list[str]
    output: Path | None = None
    weights: Path | None = None
    opset: int | None = None
    exporter: str = "dynamo"
    static: bool = False
    batches: tuple[int, ...] = DEFAULT_BATCHES
    seed: int = 0
    tolerance: Tolerance = EXPORT_TOLERANCE
    output_names: list[str] | None = None
    golden: Path | None = None
    force: bool = False
    keep_failed: bool = False
    recipe: str = ""
    dynamic: list[str] = field(default_factory=list)  # --dynamic NAME:AXIS=SYMBOL[,...] (empty: dim 0 is the batch)
    sizes: list[str] = field(default_factory=list)  # --sizes SYMBOL=A,B


@dataclass
class Plan:
    spec: Spec
    inputs: list[InputSpec]
    output: Path
    dyn: DynamicAxes = field(default_factory=DynamicAxes)
    checked: dict[str, tuple[int, ...]] = field(default_factory=dict)  # symbol → the sizes the check runs at


@dataclass
class ExportOutcome:
    request: ExportRequest
    plan: Plan
    torch_version: str
    exported: Exported
    opset: OpsetReport
    onnx_inputs: list[TensorSpec]
    onnx_outputs: list[TensorSpec]
    verify: VerifyReport
    written: list[Path] = field(default_factory=list)
    golden: GoldenCase | None = None

    @property
    def output(self) -> Path:
        return self.plan.output

    def summary(self) -> str:
        def specs(items: list[TensorSpec]) -> str:
            return ", ".join(f"{s.name}[{','.join('?' if d is None else str(d) for d in s.shape)}] {s.dtype}" for s in items)

        r, dyn = self.request, self.plan.dyn
        if not dyn.symbols:
            shapes = "static shapes"
        elif dyn.is_default_batch:
            shapes = f"dynamic batch (traced at batch {self.exported.trace_batch})"
        else:
            shapes = f"dynamic axes {dyn.text()} (traced at {dynamic.sizes_text(self.exported.trace_sizes)})"
        given = given_sizes(dyn, self.plan.inputs)
        raised = [f"{s} {n} (--input gives {given[s]}; torch.export specializes sizes 0 and 1)" for s, n in self.exported.trace_sizes.items() if n != given[s] and s != dynamic.BATCH]
        lines = [
            f"exported {self.plan.spec.text}{' with weights ' + str(r.weights) if r.weights else ''} with the {self.exported.exporter} exporter "
            f"(torch {self.torch_version}) in {self.exported.seconds:.1f}s; {shapes}",
            *(f"  traced at {text}" for text in raised),
            *([f"  renamed dims {', '.join(f'{a} → {b}' for a, b in self.exported.renamed.items())}"] if self.exported.renamed else []),
            f"  {self.opset.line()}",
            *(f"  repaired {fix}" for fix in self.opset.fixes),
            f"  inputs: {specs(self.onnx_inputs)}",
            f"  outputs: {specs(self.onnx_outputs)}",
            "  passes onnx.checker.check_model(full_check=True)",
        ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {
            "spec": self.plan.spec.text,
            "weights": None if r.weights is None else str(r.weights),
            "exporter": self.exported.exporter,
            "torch": self.torch_version,
            "dynamic_batch": dynamic.BATCH in self.plan.dyn.symbols,
            "trace_batch": self.exported.trace_batch,
            "dynamic_axes": self.plan.dyn.to_json(),
            "trace_sizes": self.exported.trace_sizes,
            "check_sizes": dynamic.to_json(self.plan.checked),
            "renamed_dims": self.exported.renamed,
            "export_seconds": round(self.exported.seconds, 3),
            "opset": self.opset.to_json(),
            "inputs": [s.to_json() for s in self.onnx_inputs],
            "outputs": [s.to_json() for s in self.onnx_outputs],
            "verify": self.verify.to_json(),
            "written": [str(p) for p in self.written],
            "golden": None if self.golden is None else str(self.golden.path),
            "torch_warnings": self.exported.warnings,
        }


class ExportCheckFailed(CheckFailed):
    """torch and ONNX Runtime disagree beyond tolerance; carries the outcome for the report."""

    def __init__(self, outcome: ExportOutcome) -> None:
        kept = f"written anyway to {outcome.output} (--keep-failed)" if outcome.written else "nothing written (--keep-failed writes it anyway)"
        super().__init__(f"the exported model does not match torch ({'; '.join(outcome.verify.failed())}); {kept}")
        self.outcome = outcome


def plan(req: ExportRequest) -> Plan:
    """Everything that can be checked before torch is imported: the spec, inputs, paths."""
    spec = parse_spec(req.spec)
    inputs = parse_inputs(req.inputs)
    dyn = parse_dynamic(req.dynamic, inputs, req.static)
    checked = check_sizes(dyn, given_sizes(dyn, inputs), tuple(req.batches), parse_sizes(req.sizes))
    newest = onnx.defs.onnx_opset_version()
    if req.opset is not None and not 7 <= req.opset <= newest:
        raise UsageError(f"--opset {req.opset} is out of range (7..{newest}, the newest this onnx {onnx.__version__} knows)")
    out = (req.output or Path.cwd() / f"{spec.stem}.onnx").absolute()
    if out.is_dir():
        raise UsageError(f"output {out} is a directory; give a file path with -o")
    if out.suffix != ".onnx":
        raise UsageError(f"output {out} should end in .onnx")
    if req.weights is not None:
        ensure_not_input(out, [req.weights])
    if req.golden is not None and req.golden.exists() and not req.force:
        what = "golden case" if (req.golden / MANIFEST).is_file() else "folder"
        raise UsageError(f"{what} {req.golden} already exists; reference outputs change only on purpose: pass --force to replace it")
    return Plan(spec, inputs, out, dyn, checked)


def run_export(req: ExportRequest, planned: Plan | None = None) -> ExportOutcome:
    p = planned or plan(req)
    with progress.step("import torch"):
        torch = require_torch()
    log.info("loading %s%s", p.spec.text, f" with weights {req.weights}" if req.weights else "")
    with progress.step(f"load {p.spec.text}"):
        model = load_model(torch, p.spec, req.weights)
    log.info("exporting with the %s exporter (torch %s), %s", req.exporter, torch.__version__, f"dynamic axes {p.dyn.text()}" if p.dyn.symbols else "static shapes")
    with progress.step(f"export ({req.exporter})"):
        exported = export(torch, model, p.inputs, exporter=req.exporter, opset=req.opset, dyn=p.dyn, output_names=req.output_names, seed=req.seed)
    fixes = fix_split_num_outputs(exported.proto)
    opset = opset_report(exported.proto, req.opset, fixes)
    if req.opset is not None and opset.written != req.opset:
        log.warning("asked for opset %d, the %s exporter wrote opset %d", req.opset, req.exporter, opset.written)
    for text in exported.warnings:
        log.info("torch warned: %s", text)
    points = check_points(p.checked)
    with staging_folder(p.output.parent) as staging:
        staged = write_model(exported.proto, staging / p.output.name)
        log.info("checking %s with onnx.checker (full_check)", p.output.name)
        with progress.step("check (onnx.checker, full)"):
            check_file(staged[0])
        log.info("running torch and ONNX Runtime at %s", "; ".join(dynamic.sizes_text(s) or "the shapes given" for s in points))
        with progress.step("verify against torch", total=len(points), unit="shapes"):
            report = verify(torch, model, staged[0], p.inputs, exported.output_names, p.dyn, points, req.seed, req.tolerance)
        outcome = ExportOutcome(req, p, str(torch.__version__), exported, opset, graph_inputs(exported.proto), graph_outputs(exported.proto), report)
        if not report and not req.keep_failed:
            raise ExportCheckFailed(outcome)
        targets = [p.output.parent / s.name for s in staged]
        commit_files(sorted(zip(staged, targets), key=lambda st: st[0] == staged[0]))  # data first, the model last
        outcome.written = targets
    if not report:
        raise ExportCheckFailed(outcome)
    if req.golden is not None:
        with progress.step("record golden case"):
            outcome.golden = record_torch_case(
                req.golden, model_files=outcome.written, report=report, input_names=[s.name for s in outcome.onnx_inputs],
                output_names=exported.output_names, tolerance=req.tolerance, recipe=req.recipe, force=req.force,
                reference={"torch": outcome.torch_version, "spec": p.spec.text, "weights": None if req.weights is None else str(req.weights), "exporter": req.exporter},
            )
    return outcome
