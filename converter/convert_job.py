"""The one flow: load → passes → emit → (golden check) → commit. Each CLI subcommand views one part of it."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converter import progress
from converter.backend_api import Artifact, Backend, EmitContext, manifest_path_for
from converter.errors import BackendUnavailable, CheckFailed, UsageError
from converter.feeds import Feeds, check_feeds, load_npz, parse_shapes, seeded_feeds
from converter.flags import PassInputs
from converter.golden import CaseResult, GoldenCase, check_case, load_case, model_precision
from converter.graph_info import graph_inputs, graph_outputs
from converter.instruments import BatchStacking, Verify, standard_instruments
from converter.interface import interface_changes, manifest_specs
from converter.model_io import LoadedModel, ensure_not_input, load_model
from converter.options import build_options, option_text, options_as_dict
from converter.pass_api import Pass
from converter.pass_manager import build_passes, check_input_model, run_pipeline
from converter.pipeline_text import Step, format_step, parse_pipeline, parse_step
from converter.plugin_manager import Plugins
from converter.report import PipelineReport
from converter.staging import SideFiles, commit_files, discard, staging_folder

log = logging.getLogger("converter")
# where passes leave the big tensors they compute, for a model whose weights stay in their files
SPILL_FILE = ".lazy-weights.bin"


@dataclass
class ConvertRequest:
    model: Path
    pipeline: str = ""
    backend: str = "ort"
    output: Path | None = None
    golden: Path | None = None
    precision: str | None = None
    verify: bool = False
    inputs: Path | None = None
    input_shapes: str | None = None
    check: bool = True
    keep_failed: bool = False
    seed: int = 0
    pass_inputs: dict[str, Any] = field(default_factory=dict)
    """Values of plugin-registered pass inputs (``--calib-data`` ...), by key: what passes read as ``ctx.inputs``."""
    pass_objects: list[Pass] | None = None
    """Pass instances to run instead of parsing ``pipeline`` (the Python API's ``passes=[...]``)."""
    backend_object: Backend | None = None
    """A backend instance to use instead of parsing ``backend``."""


@dataclass
class ConvertOutcome:
    source: LoadedModel
    report: PipelineReport
    artifact: Artifact | None
    golden: CaseResult | None = None
    written: list[Path] = field(default_factory=list)
    interface_before: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The source model's inputs and outputs (name, dtype, dims), read before any pass ran."""
    interface_after: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The artifact's inputs and outputs as its backend runs them."""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.source.path),
            "model_sha256": self.source.sha256,
            "passes": self.report.to_json(),
            "artifact": None if self.artifact is None else {"path": str(self.artifact.path), "backend": self.artifact.backend, "files": [str(f) for f in self.written], "manifest": self.artifact.manifest},
            "golden": None if self.golden is None else self.golden.to_json(),
            "interface": {"before": self.interface_before, "after": self.interface_after},
        }


def interface_of(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    return {"inputs": [s.to_json() for s in graph_inputs(model)], "outputs": [s.to_json() for s in graph_outputs(model)]}


def _check_interface(model: onnx.ModelProto, backend: Backend, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
    """The artifact must take the feeds the model takes and give the same outputs (exit 1 naming the change).

    Returns the artifact's interface as its backend runs it."""
    inputs, outputs = manifest_specs(artifact.manifest, "inputs"), manifest_specs(artifact.manifest, "outputs")
    if inputs is None or outputs is None:
        runner = backend.load(artifact)
        inputs, outputs = runner.inputs, runner.outputs
    changes = interface_changes(model, inputs, outputs)
    if changes:
        raise CheckFailed(f"backend '{backend.name}' changed the model's interface: {'; '.join(changes[:4])}" + (f" (+{len(changes) - 4} more)" if len(changes) > 4 else ""))
    return {"inputs": [s.to_json() for s in inputs], "outputs": [s.to_json() for s in outputs]}


def make_backend(text: str, plugins: Plugins) -> Backend:
    """A backend instance from ``name`` or ``name{opt=val}``; unavailable backends raise exit-3 errors."""
    step = parse_step(text)
    cls = plugins.backends.get(step.name).cls
    return ready_backend(cls(build_options(cls.Options, step.options, f"backend '{step.name}'")))


def ready_backend(backend: Backend) -> Backend:
    """``backend`` if it can run here (exit 3 naming why not) and its options suit this machine."""
    avail = type(backend).availability()
    if not avail:
        raise BackendUnavailable(f"backend '{backend.name}' is unavailable: {avail.reason}")
    backend.preflight()
    return backend


def verify_feeds(req: ConvertRequest, loaded: LoadedModel) -> Feeds:
    specs = graph_inputs(loaded.proto)
    if req.inputs is not None:
        feeds = load_npz(req.inputs)
        check_feeds(feeds, specs, where=str(req.inputs))
        return feeds
    return seeded_feeds(specs, req.seed, parse_shapes(req.input_shapes))


def default_output(model: Path, backend: Backend) -> Path:
    return Path.cwd() / f"{model.stem}.{backend.name}{backend.suffix}"


def convert(req: ConvertRequest, plugins: Plugins) -> ConvertOutcome:
    if req.pass_objects is not None:
        passes = list(req.pass_objects)
        steps = [Step(p.name, {k: option_text(v) for k, v in options_as_dict(p.options).items()}) for p in passes]
    else:
        steps = parse_pipeline(req.pipeline)
        passes = build_passes(steps, plugins.passes)
    backend = ready_backend(req.backend_object) if req.backend_object is not None else make_backend(req.backend, plugins)
    with progress.step("load model") as task:
        loaded = load_model(req.model)
        task.update(detail=f"{len(loaded.proto.graph.node)} nodes")
    before = interface_of(loaded.proto)
    protected = [loaded.path, *loaded.external_data_files]
    out = (req.output or default_output(loaded.path, backend)).absolute()
    if out.is_dir():
        raise UsageError(f"output {out} is a directory; give a file path with -o")
    ensure_not_input(out, protected)
    case = load_case(req.golden) if req.golden is not None else None
    if req.check:
        with progress.step("check model"):
            check_input_model(loaded.proto, str(loaded.path))
    instruments = standard_instruments(
        check=req.check,
        verify=Verify(verify_feeds(req, loaded)) if req.verify else None,
        batch=BatchStacking(input_shapes=parse_shapes(req.input_shapes) or None, seed=req.seed) if req.verify else None,
    )
    side_files = SideFiles(protected=[*protected, out, manifest_path_for(out), out.with_name(out.name + ".data")])
    with ExitStack() as stack:
        # weights left in their files: the staging folder opens first, so what passes compute can leave memory too
        early = stack.enter_context(staging_folder(out.parent)) if loaded.lazy_bytes else None
        model, report = run_pipeline(
            loaded.proto, passes, instruments=instruments, seed=req.seed, model_dir=str(loaded.path.parent), inputs=PassInputs(req.pass_inputs), side_files=side_files,
            spill=early / SPILL_FILE if early is not None else None,
        )
        staging = early if early is not None else stack.enter_context(staging_folder(out.parent))
        return _emit(req, loaded, model, report, backend, passes, steps, out, staging, case, protected, side_files, before)


def _emit(req: ConvertRequest, loaded: LoadedModel, model: onnx.ModelProto, report: PipelineReport, backend: Backend, passes: list, steps: list[Step],
          out: Path, staging: Path, case: GoldenCase | None, protected: list[Path], side_files: SideFiles, before: dict) -> ConvertOutcome:
    outcome = ConvertOutcome(loaded, report, None, interface_before=before)
    precision = req.precision or _lowest_precision([_pipeline_precision(passes), model_precision(model)])
    pipeline_text = ",".join(format_step(s) for s in steps)
    ctx = EmitContext(staging=staging, file_name=out.name, log=logging.getLogger(f"converter.backend.{backend.name}"), source_sha256=loaded.sha256, pipeline=pipeline_text, external_data=loaded.has_external_data)
    try:
        with progress.step(f"emit ({backend.name})"):
            artifact = backend.emit(model, ctx)
        artifact.manifest.setdefault("source_model", str(loaded.path))
        artifact.write_manifest()
    except OSError as exc:
        raise UsageError(f"cannot write the artifact in {out.parent}: {exc.strerror or exc} (disk full or a file-size limit?)") from exc
    for f in artifact.files:
        ensure_not_input(out.parent / f.name, protected)
    outcome.interface_after = _check_interface(model, backend, artifact)
    if case is not None:
        outcome.golden = check_case(backend.load(artifact), case, precision)
    if outcome.golden is not None and not outcome.golden and not req.keep_failed:
        outcome.artifact = artifact
        raise GoldenFailed(outcome)
    passed = outcome.golden is None or bool(outcome.golden)
    side = side_files.stage() if passed else []  # caches and other side files: only when the run succeeds
    # side files and data first, the main file next, the manifest last: it is the record that the set is complete
    order = sorted(artifact.files, key=lambda p: (p == artifact.manifest_path, p == artifact.path))
    try:
        commit_files([*side, *((f, out.parent / f.name) for f in order)])
    except BaseException:
        discard(side)
        raise
    outcome.written = [*(final for _, final in side), *(out.parent / f.name for f in order)]
    outcome.artifact = artifact.moved_to(out.parent)
    if outcome.golden is not None and not outcome.golden:
        raise GoldenFailed(outcome)
    return outcome


_ORDER = ["fp32", "fp16", "int8"]


def _lowest_precision(found: list[str]) -> str:
    return max(found, key=_ORDER.index) if found else "fp32"


def _pipeline_precision(passes: list) -> str:
    return _lowest_precision([p.output_precision for p in passes if p.output_precision])


class GoldenFailed(CheckFailed):
    """The artifact missed its golden case; carries the outcome for the report."""

    def __init__(self, outcome: ConvertOutcome) -> None:
        g = outcome.golden
        assert g is not None
        failed = sorted({o for _, c in g.data_sets for o in c.failed_outputs()})
        main = [p for p in outcome.written if not p.name.endswith(".manifest.json")]
        kept = "kept at " + str(main[0]) if main else "not written (pass --keep-failed to keep it)"
        super().__init__(f"golden check failed for case '{g.case}' at {g.precision}: {', '.join(failed)}; artifact {kept}")
        self.outcome = outcome
