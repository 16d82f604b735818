"""Conformance: every pass keeps ONNX Runtime's outputs on the backend test data the onnx wheel ships.

Each case folder (``onnx/backend/test/data/{simple,pytorch-converted,pytorch-operator}``)
holds ``model.onnx`` and ``test_data_set_0/input_K.pb`` / ``output_K.pb``. A case
counts when ONNX Runtime runs the untouched model and matches the expected outputs
(within the tolerance below); the others are skipped with ORT's reason. For every
pass in :data:`PASSES`, each counted case goes through the pass manager
(``check=True``: the ONNX checker with strict shape inference after the pass), runs
on ONNX Runtime, and must match the expected outputs.

Tolerance: ``|actual - expected| <= 1e-4 * max|expected| + 1e-3 * |expected|`` per
output (converter.compare's rule); integer and bool outputs must match exactly.

One test per pass iterates the whole corpus and reports every failing case at once;
run with ``-s`` to see the counts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converter.compare import Tolerance, compare
from converter.graph_info import graph_inputs
from converter.ort_session import make_session, run_session
from converter.pass_manager import build_passes, run_pipeline
from converter.pipeline_text import Step
from converter.plugin_manager import load_plugins

CORPUS_ROOT = Path(onnx.__file__).parent / "backend" / "test" / "data"
CORPUS_DIRS = ("simple", "pytorch-converted", "pytorch-operator")

PASSES: tuple[str, ...] = ("simplify", "fold_constants", "infer_shapes", "cleanup")
"""Passes run over the corpus; extend this tuple to cover a new pass."""

TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3, min_cosine=None, min_top1=None)


@dataclass
class Case:
    name: str
    model_path: Path
    feeds: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


@dataclass
class Corpus:
    cases: list[Case]
    skipped: dict[str, str]
    """Case name -> why ONNX Runtime cannot serve as the reference for it."""


def _read_tensor(path: Path) -> np.ndarray:
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def _numbered(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))


def _load_case(case_dir: Path) -> Case:
    model = onnx.load(str(case_dir / "model.onnx"))
    data = case_dir / "test_data_set_0"
    input_names = [s.name for s in graph_inputs(model)]
    output_names = [o.name for o in model.graph.output]
    feeds = dict(zip(input_names, [_read_tensor(p) for p in _numbered(data, "input")], strict=True))
    expected = dict(zip(output_names, [_read_tensor(p) for p in _numbered(data, "output")], strict=True))
    return Case(f"{case_dir.parent.name}/{case_dir.name}", case_dir / "model.onnx", feeds, expected)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def _ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_session(make_session(model), feeds)


def _baseline_problem(case: Case) -> str | None:
    """Why ORT cannot be the reference for this case before any pass, or None."""
    try:
        outputs = _ort_outputs(onnx.load(str(case.model_path)), case.feeds)
    except Exception as exc:  # ORT's error types vary; the reason is recorded as the skip reason
        return f"ONNX Runtime cannot run the model as-is: {_one_line(exc)}"
    result = compare(outputs, case.expected, TOLERANCE)
    if not result:
        return f"ONNX Runtime's outputs differ from the expected ones before any pass: {result.failed_outputs()}"
    return None


@functools.lru_cache(maxsize=1)
def corpus() -> Corpus:
    cases, skipped = [], {}
    for sub in CORPUS_DIRS:
        for case_dir in sorted((CORPUS_ROOT / sub).iterdir()):
            if not (case_dir / "model.onnx").is_file():
                continue
            case = _load_case(case_dir)
            problem = _baseline_problem(case)
            if problem:
                skipped[case.name] = problem
            else:
                cases.append(case)
    return Corpus(cases, skipped)


@functools.lru_cache(maxsize=1)
def _registry():
    return load_plugins(entry_points_enabled=False).passes


def _run_case(pass_name: str, case: Case) -> str | None:
    """None when the pass keeps the outputs; otherwise a one-line account of what went wrong."""
    model = onnx.load(str(case.model_path))
    passes = build_passes([Step(pass_name)], _registry())
    try:
        out, _ = run_pipeline(model, passes, model_dir=str(case.model_path.parent))
        actual = _ort_outputs(out, case.feeds)
    except Exception as exc:  # any failure of the pass or of running its result is a conformance failure
        return _one_line(exc)
    result = compare(actual, case.expected, TOLERANCE)
    return None if result else result.table().replace("\n", " | ")


def test_corpus_is_present_and_mostly_runnable() -> None:
    c = corpus()
    total = len(c.cases) + len(c.skipped)
    print(f"\nconformance corpus: {total} cases, {len(c.cases)} runnable on ONNX Runtime as-is, {len(c.skipped)} skipped")
    for name, why in sorted(c.skipped.items()):
        print(f"  skipped {name}: {why}")
    assert total >= 100
    assert len(c.cases) >= total // 2


@pytest.mark.parametrize("pass_name", PASSES)
def test_pass_keeps_corpus_outputs(pass_name: str) -> None:
    c = corpus()
    failures = {case.name: why for case in c.cases if (why := _run_case(pass_name, case)) is not None}
    passed = len(c.cases) - len(failures)
    print(f"\nconformance[{pass_name}]: {passed} passed, {len(failures)} failed, {len(c.skipped)} skipped (ONNX Runtime cannot run them as-is)")
    assert not failures, "\n".join(f"{name}: {why}" for name, why in sorted(failures.items()))


def test_dynamic_batch_on_corpus() -> None:
    """dynamic_batch, where a case has a batch: converted cases keep the expected outputs (and pass the
    pass's own stacking self-check at batch 3); a refusal must name its reason, never crash or mislead."""
    from converter.errors import PassError

    c = corpus()
    converted, refused, failures = 0, {}, {}
    for case in c.cases:
        model = onnx.load(str(case.model_path))
        dims = [s.shape[0] if s.shape else None for s in graph_inputs(model)]
        if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
            continue  # no static batch on the inputs: nothing to make dynamic
        passes = build_passes([Step("dynamic_batch")], _registry())
        try:
            out, report = run_pipeline(model, passes, model_dir=str(case.model_path.parent))
        except PassError as exc:
            if exc.exit_code != 2 or "dynamic_batch" not in str(exc):
                failures[case.name] = _one_line(exc)
            else:
                refused[case.name] = exc.message
            continue
        try:
            actual = _ort_outputs(out, case.feeds)
        except Exception as exc:  # the converted model must still run on the original inputs
            failures[case.name] = _one_line(exc)
            continue
        result = compare(actual, case.expected, TOLERANCE)
        if not result:
            failures[case.name] = result.table().replace("\n", " | ")
        elif report.records[0].modified:
            converted += 1
    print(f"\nconformance[dynamic_batch]: {converted} converted and equal, {len(refused)} refused with a reason, {len(failures)} failed")
    assert not failures, "\n".join(f"{name}: {why}" for name, why in sorted(failures.items()))
    assert converted >= 50
    assert all(why.strip() for why in refused.values())
