"""Emit → load → run on the zoo, and interface preservation.

Each zoo case is emitted once per subject, the way ``convert`` does it: the model is read with the
real loader (external data included) from a copy of the case; the backend emits into a real staging
folder (``converter.staging.staging_folder``) with the working folder set to an empty one; the
manifest is written; every listed file must be inside staging and nothing may appear outside it;
the files are committed beside it (renamed, as ``convert`` does), and the artifact is opened *from
disk* by a fresh backend instance (``converter.artifacts.artifact_from_disk``): an artifact that
only works from its staging path, or needs state from the instance that emitted it, fails here.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converter.artifacts import artifact_from_disk
from converter.backend_api import Artifact, EmitContext, Finding, Runner, Severity, TensorSpec
from converter.compare import compare
from converter.errors import ConverterError, shorten
from converter.interface import interface_changes, manifest_specs
from converter.model_io import load_model
from converter.staging import OWNER, commit_files, staging_folder
from converter.testing.failures import refusal
from converter.testing.subject import ConformanceFailure, ConformanceSkip, Subject, fail, listing, listing_text, raised, working_dir
from converter.testing.zoo import ZooCase, zoo_case


@dataclass
class Emitted:
    """A zoo case emitted, committed and loaded back from disk."""

    case: ZooCase
    model: onnx.ModelProto
    artifact: Artifact
    runner: Runner


def _call(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ConverterError as exc:
        raise fail(f"{what} raised {type(exc).__name__} (exit {exc.exit_code}) on a model it must handle: {exc}") from exc
    except Exception as exc:
        raise fail(f"{what} raised {raised(exc)}") from exc


def _check_staged(artifact: Any, staging: Path, ctx: EmitContext, name: str) -> None:
    if not isinstance(artifact, Artifact):
        raise fail(f"emit returned {shorten(repr(artifact), 80)}, not a converter.backend_api.Artifact")
    problems = []
    if artifact.path != staging / ctx.file_name:
        problems.append(f"the main file is {artifact.path}, not ctx.staging / ctx.file_name ({staging / ctx.file_name}): convert commits it under the name the user chose")
    if artifact.backend != name:
        problems.append(f"Artifact.backend is {artifact.backend!r}, not the backend's name {name!r}")
    if not isinstance(artifact.manifest, dict):
        problems.append(f"Artifact.manifest is {type(artifact.manifest).__name__}, not a dict")
    if artifact.path not in artifact.files:
        problems.append(f"Artifact.files does not list the main file {artifact.path.name}")
    for f in artifact.files:
        if Path(f).parent != staging:
            problems.append(f"listed file {f} is not directly inside ctx.staging ({staging}): write every file there")
        elif not Path(f).is_file():
            problems.append(f"listed file {Path(f).name} does not exist (or is not a file)")
    if len({Path(f).name for f in artifact.files}) != len(artifact.files):
        problems.append("Artifact.files lists a name twice")
    if problems:
        raise fail("emit returned an artifact that breaks the contract:\n  - " + "\n  - ".join(problems))


def _unlisted(staging: Path, artifact: Artifact) -> list[str]:
    listed = {Path(f).name for f in artifact.files}
    return sorted(p.name for p in staging.iterdir() if p.name not in listed and p.name != OWNER)


def emit_case(subject: Subject, case: ZooCase) -> Emitted:
    """Emit ``case`` with the subject's backend as ``convert`` does, commit it, load it back from disk."""
    backend = subject.backend()
    root = subject.fresh_dir(f"emit-{case.name}")
    src, out, cwd = root / "src", root / "out", root / "cwd"
    for d in (src, out, cwd):
        d.mkdir()
    for f in case.model_files:
        shutil.copyfile(f, src / f.name)
    loaded = load_model(src / "model.onnx")
    model = loaded.proto
    before, src_before = model.SerializeToString(), listing(src)
    file_name = f"model{subject.cls.suffix}"
    with working_dir(cwd), staging_folder(out) as staging:
        ctx = EmitContext(staging=staging, file_name=file_name, log=logging.getLogger(f"converter.backend.{subject.name}"),
                          source_sha256=loaded.sha256, pipeline="", external_data=loaded.has_external_data)
        artifact = _call(f"emit on zoo case '{case.name}' ({case.description})", backend.emit, model, ctx)
        _check_staged(artifact, staging, ctx, subject.name)
        outside = [n for n in listing(out) if not n.startswith(staging.name)]
        if outside or listing(cwd):
            raise fail(f"emit wrote outside ctx.staging: {listing_text(outside + [f'<working folder>/{n}' for n in listing(cwd)])}; write only into ctx.staging")
        unlisted = _unlisted(staging, artifact)
        if unlisted:
            raise fail(f"emit left files in ctx.staging that Artifact.files does not list: {listing_text(unlisted)}; convert commits only listed files, "
                       "so list every file the artifact needs (and delete scratch files before returning)")
        if model.SerializeToString() != before:
            raise fail("emit changed the model it was given; convert checks the interface against that model afterwards: work on a copy")
        artifact.manifest.setdefault("source_model", str(src / "model.onnx"))
        try:
            artifact.write_manifest()
        except (TypeError, ValueError) as exc:
            raise fail(f"the artifact manifest cannot be written as JSON: {raised(exc)}; keep it to str, numbers, bools, lists and dicts") from exc
        order = sorted(artifact.files, key=lambda p: (p == artifact.manifest_path, p == artifact.path))
        commit_files([(Path(f), out / Path(f).name) for f in order])
    committed = {Path(f).name for f in artifact.files}
    if set(listing(out)) != committed or listing(src) != src_before:
        extra = sorted(set(listing(out)) - committed) + [f"<source>/{n}" for n in sorted(set(listing(src)) ^ set(src_before))]
        raise fail(f"files appeared outside the artifact: {listing_text(extra)}; a backend writes only into ctx.staging")
    on_disk = _call("reading the committed artifact", artifact_from_disk, out / file_name, subject.name)
    on_disk.files = [out / n for n in sorted(committed)]
    runner = _call(f"load of the committed artifact of '{case.name}' (a fresh backend instance, files renamed out of staging)", subject.backend().load, on_disk)
    if not isinstance(runner, Runner):
        raise fail(f"load returned {shorten(repr(runner), 80)}, not a converter.backend_api.Runner")
    return Emitted(case, model, on_disk, runner)


def emitted(subject: Subject, case_name: str) -> Emitted:
    """The case emitted once per subject; a failure is remembered and raised again for every check that needs it."""
    key = f"emitted:{case_name}"
    if key not in subject.cache:
        try:
            subject.cache[key] = emit_case(subject, zoo_case(case_name))
        except ConformanceFailure as exc:
            subject.cache[key] = exc
    result = subject.cache[key]
    if isinstance(result, ConformanceFailure):
        raise fail(str(result))
    return result


def declared_rejection(subject: Subject, case_name: str) -> str | None:
    """The errors the backend's own ``lint()`` reports for the case (it declares it will reject the model), or None."""
    key = f"lint:{case_name}"
    if key not in subject.cache:
        model = onnx.load(str(zoo_case(case_name).model_path))
        try:
            findings = subject.backend().lint(model)
        except Exception as exc:  # noqa: BLE001 - reported as the check's failure
            subject.cache[key] = fail(f"lint() raised {raised(exc)} on zoo case '{case_name}'; it must return a list of Finding")
        else:
            if not isinstance(findings, list) or not all(isinstance(f, Finding) for f in findings):
                subject.cache[key] = fail(f"lint() returned {shorten(repr(findings), 80)} on zoo case '{case_name}', not a list of converter.backend_api.Finding")
            else:
                errors = [f.line() for f in findings if f.severity == Severity.ERROR]
                subject.cache[key] = "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "") if errors else None
    result = subject.cache[key]
    if isinstance(result, ConformanceFailure):
        raise fail(str(result))
    return result


def _declared_unsupported(subject: Subject, case_name: str, *, verify: bool) -> None:
    """Skip a case the backend's lint() rejects, once it has refused it cleanly (a ConverterError, exit 1 or 2)."""
    rejected = declared_rejection(subject, case_name)
    if rejected is None:
        return
    case = zoo_case(case_name)
    if verify:
        golden = case.golden()
        model = load_model(case.model_path).proto
        where = refusal(subject, model, f"zoo case '{case_name}', which its lint() rejects ({rejected})", dict(golden.data_sets[0].inputs))
        if where is None:
            raise fail(f"lint() reports errors for zoo case '{case_name}' ({rejected}), yet the backend emitted, loaded and ran it: "
                       "a lint error means the backend will reject the model")
    raise ConformanceSkip(f"backend '{subject.name}' declares through lint() that it rejects zoo case '{case_name}': {rejected}"
                          + (" (it does refuse it with a clean error)" if verify else ""))


def check_emit_load_run(subject: Subject, case_name: str) -> None:
    """Every data set runs and matches the reference outputs at the case's precision tolerance.

    A case the backend's ``lint()`` reports errors for is skipped with those errors, once emit, load or
    run has refused it with a ConverterError (exit 1 or 2): a lint error promises exactly that."""
    subject.require_available()
    _declared_unsupported(subject, case_name, verify=True)
    em = emitted(subject, case_name)
    case, golden = em.case, em.case.golden()
    wanted = [o.name for o in em.model.graph.output]
    for i, ds in enumerate(golden.data_sets):
        batch = case.batch_sizes[i] if i < len(case.batch_sizes) else "?"
        at = f"zoo case '{case.name}', data set {ds.name} (batch {batch})"
        got = _call(f"run on {at}", em.runner.run, {k: v.copy() for k, v in ds.inputs.items()})
        if not isinstance(got, dict):
            raise fail(f"run on {at} returned {type(got).__name__}, not a dict of output name → numpy array")
        missing, extra = [n for n in wanted if n not in got], sorted(set(got) - set(wanted))
        if missing or extra:
            raise fail(f"run on {at} returned outputs {sorted(got)}; the model's outputs are {wanted}"
                       + (f" (missing {missing})" if missing else "") + (f" (not in the model: {extra})" if extra else "")
                       + ": key every output by the model's output name")
        for n in wanted:
            arr = np.asarray(got[n])
            if arr.dtype != ds.outputs[n].dtype:
                raise fail(f"run on {at}: output '{n}' is {arr.dtype}, the model's output is {ds.outputs[n].dtype}: return the model's dtypes")
        result = compare(got, ds.outputs, precision=case.precision)
        if not result:
            raise fail(f"run on {at}: outputs {', '.join(result.failed_outputs())} differ from the reference beyond the {case.precision} tolerance:\n{result.table()}")


def _specs(where: str, value: Any) -> list[TensorSpec]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, TensorSpec) for s in value):
        raise fail(f"{where} is {shorten(repr(value), 80)}, not a list of converter.backend_api.TensorSpec")
    return list(value)


def check_interface(subject: Subject, case_name: str) -> None:
    """Runner and manifest describe the model's inputs and outputs: names, dtypes, ranks, the dims left alone."""
    subject.require_available()
    _declared_unsupported(subject, case_name, verify=False)
    try:
        em = emitted(subject, case_name)
    except ConformanceFailure as exc:
        raise fail(f"cannot check the interface: emitting zoo case '{case_name}' failed (see emit_load_run[{case_name}]): {exc}") from exc
    problems = []
    runner_in, runner_out = _specs("Runner.inputs", getattr(em.runner, "inputs", None)), _specs("Runner.outputs", getattr(em.runner, "outputs", None))
    problems += [f"runner: {c}" for c in interface_changes(em.model, runner_in, runner_out)]
    try:
        manifest_in, manifest_out = manifest_specs(em.artifact.manifest, "inputs"), manifest_specs(em.artifact.manifest, "outputs")
    except (KeyError, TypeError, AttributeError) as exc:
        raise fail(f"the manifest's inputs/outputs are not TensorSpec JSON ({{name, dtype, shape}}): {raised(exc)}") from exc
    if manifest_in is not None and manifest_out is not None:
        problems += [f"manifest: {c}" for c in interface_changes(em.model, manifest_in, manifest_out)]
    if problems:
        raise fail(f"the artifact of zoo case '{case_name}' changed the model's interface (convert exits 1 on this):\n  - " + "\n  - ".join(problems[:8])
                   + (f"\n  (+{len(problems) - 8} more)" if len(problems) > 8 else ""))
