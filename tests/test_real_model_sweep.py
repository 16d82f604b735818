"""Real-model sweep: every packaged model x three pipelines x two backends, judged on numbers.

Each cell runs the real flow in-process (``convert_job.convert``: load, passes, emit,
commit), opens the artifact with the backend's own runner (ONNX Runtime for both
``ort`` and ``onnx``) and compares it with the source model run on ONNX Runtime, on
the registry's seeded inputs (``tests/real_models.py``):

- ``simplify,fold_constants,cleanup``: fp32, every output within ``1e-4 x max|ref|``
  (+ ``rtol 1e-4``), cosine >= 0.99999;
- ``fold_constants,dynamic_batch,cleanup``: the same at batch 1, then the artifact at
  batch 1, 2 and 3 equals its own batch-1 runs on those samples (seeds 0..N-1), stacked
  along each tensor's batch dim as the registry knows it, within
  :data:`converter.batch_verify.BATCH_TOLERANCE` (``1e-5 x max|ref|``). Against its own
  runs, not the source's: ORT's optimization levels alone move the text detector's
  output by 1.1e-5 of its scale, and the batch-1 comparison above already ties the
  artifact to the source. The registry's feeds, not ``check_batch_stacking``'s N(0, 1)
  ones: on those the text detector outputs ~0.02 at most and float noise is the signal;
- ``fp16``: cosine >= 0.999 on every float output (NaN where the source is finite fails).

A pass that refuses a model (exit 2, with its reason) is an expected refusal when it
is listed in :data:`REFUSALS`, and the reason is asserted. Known failures are
``xfail(strict=True)`` with the diagnosis (:data:`KNOWN_FAILURES`), so a fix shows up
as an XPASS to remove from the list. A missing package skips its cells with the pip line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from converter.backend_api import Runner
from converter.batch_verify import BATCH_TOLERANCE
from converter.compare import DEFAULT_TOLERANCES, Comparison, Tolerance, compare
from converter.convert_job import ConvertRequest, convert, make_backend
from converter.errors import ConverterError, PassError
from converter.graph_info import graph_outputs
from converter.ort_session import make_session, run_session
from converter.plugin_manager import Plugins, load_plugins
from tests.real_models import BY_ID, MODELS, RealModel

pytestmark = pytest.mark.slow

PIPELINES = {
    "fp32": "simplify,fold_constants,cleanup",
    "batch": "fold_constants,dynamic_batch,cleanup",
    "fp16": "fp16",
}
BACKENDS = ("ort", "onnx")
BATCH_SIZES = (1, 2, 3)

FP32 = replace(DEFAULT_TOLERANCES["fp32"], atol=1e-4, min_top1=None)
"""``|got - ref| <= 1e-4 * max|ref| + 1e-4 * |ref|``, cosine >= 0.99999 (top-1 off: seeded inputs give near ties)."""
FP16 = Tolerance(atol=None, rtol=None, min_cosine=0.999, min_top1=None)


@dataclass(frozen=True)
class Refusal:
    pattern: str
    """Regex the pass's one-line reason must match."""
    why: str


REFUSALS: dict[tuple[str, str], Refusal] = {}
"""(model id, pipeline key) -> the refusal a pass gives, for every backend."""

KNOWN_FAILURES: dict[tuple[str, str, str], str] = {
    ("oww_melspectrogram", "fp16", "*"): (
        "fp16 turns every value into inf/NaN on int16-scale PCM (what openWakeWord feeds): the STFT Conv outputs reach "
        "1.1e5, the power spectrum 1.4e10, the mel energies 2.5e8, all past fp16's 65504; the pass casts them to fp16 "
        "for Unsqueeze/Transpose/Pow/Add/MatMul/Clip/Log (it guards out-of-range constants, max_finite_val, not "
        "activations), so Log/ReduceMax give inf and the top_db Sub NaN; the front end up to Log must stay float32"
    ),
}
"""(model id, pipeline key, backend or '*') -> diagnosis; those cells are xfail(strict=True)."""


def _cells() -> list[object]:
    cells = []
    for m in MODELS:
        for pipe in PIPELINES:
            for backend in BACKENDS:
                why = KNOWN_FAILURES.get((m.id, pipe, backend)) or KNOWN_FAILURES.get((m.id, pipe, "*"))
                marks = [pytest.mark.xfail(reason=why, strict=True)] if why else []
                cells.append(pytest.param(m.id, pipe, backend, marks=marks, id=f"{m.id}-{pipe}-{backend}"))
    return cells


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return load_plugins()


_REFERENCES: dict[str, tuple[onnx.ModelProto, dict[str, np.ndarray]]] = {}


def _source(m: RealModel) -> Path:
    path = m.path()
    if path is None:
        pytest.skip(f"{m.package} is not installed: {m.install_hint} (make test installs it)")
    return path


def _reference(m: RealModel, path: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The source model and its outputs on the batch-1 seeded feeds (ONNX Runtime, computed once per model)."""
    if m.id not in _REFERENCES:
        model = onnx.load(str(path))
        _REFERENCES[m.id] = (model, run_session(make_session(model), m.feeds(0, 1)))
    return _REFERENCES[m.id]


def _float_outputs(model: onnx.ModelProto, ref: dict[str, np.ndarray]) -> list[str]:
    return [o.name for o in graph_outputs(model) if ref[o.name].dtype.kind == "f"]


@pytest.mark.parametrize(("model_id", "pipe", "backend"), _cells())
def test_real_model_cell(model_id: str, pipe: str, backend: str, plugins: Plugins, tmp_path: Path) -> None:
    m = BY_ID[model_id]
    path = _source(m)
    source, ref = _reference(m, path)
    req = ConvertRequest(model=path, pipeline=PIPELINES[pipe], backend=backend, output=tmp_path / "out.onnx")

    refusal = REFUSALS.get((model_id, pipe))
    if refusal is not None:
        with pytest.raises(PassError) as info:
            convert(req, plugins)
        assert info.value.exit_code == 2, f"expected a refusal (exit 2), got exit {info.value.exit_code}: {info.value}"
        assert re.search(refusal.pattern, str(info.value)), f"refused for another reason: {info.value}"
        return

    try:
        outcome = convert(req, plugins)
    except ConverterError as exc:
        pytest.fail(f"{req.pipeline} -b {backend} failed (exit {exc.exit_code}): {exc}")
    assert outcome.artifact is not None and outcome.artifact.path.is_file()
    runner = make_backend(backend, plugins).load(outcome.artifact)
    got = runner.run(m.feeds(0, 1))

    if pipe == "fp16":
        cmp = compare(got, ref, FP16, "fp16", names=_float_outputs(source, ref))
    else:
        cmp = compare(got, ref, FP32, "fp32")
    assert cmp, f"{req.pipeline} -b {backend}: outputs differ from the source model\n{cmp.table()}"
    overflow = _non_finite(got, ref)
    assert not overflow, f"{req.pipeline} -b {backend}: inf/NaN where the source is finite: {overflow}\n{cmp.table()}"

    if pipe == "batch":
        for n in BATCH_SIZES:
            stacked = _stacked_run(m, runner, n)
            assert stacked, f"{req.pipeline} -b {backend}: batch {n} != {n} stacked batch-1 runs\n{stacked.table()}"


def _non_finite(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, int]:
    """Count of inf/NaN values per output where the reference is finite (a cosine-only tolerance lets inf through)."""
    counts = {}
    for name, r in ref.items():
        g = np.asarray(got.get(name))
        if r.dtype.kind == "f" and g.shape == r.shape and g.dtype.kind == "f":
            bad = int(np.sum(~np.isfinite(g) & np.isfinite(r)))
            if bad:
                counts[name] = bad
    return counts


def _stack(m: RealModel, runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out = {}
    for name, first in runs[0].items():
        axis = m.axis(name, first.ndim)
        out[name] = first if axis is None else np.concatenate([r[name] for r in runs], axis=axis)
    return out


def _stacked_run(m: RealModel, runner: Runner, n: int) -> Comparison:
    """The artifact on n samples stacked along their batch dims vs its runs on each sample alone."""
    samples = [m.feeds(seed, 1) for seed in range(n)]
    expected = _stack(m, [runner.run(f) for f in samples])
    return compare(runner.run(_stack(m, samples)), expected, BATCH_TOLERANCE)


def test_registry_is_sound() -> None:
    """Ids are unique, every refusal and known failure names a real cell, feeds are deterministic."""
    assert len(BY_ID) == len(MODELS)
    for key in [*REFUSALS, *KNOWN_FAILURES]:
        assert key[0] in BY_ID and key[1] in PIPELINES, key
    for m in MODELS:
        try:
            a, b = m.feeds(3, 2), m.feeds(3, 2)
        except pytest.skip.Exception:  # feeds from a photo package that is not installed
            continue
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), m.id
        assert not np.array_equal(*(next(iter(m.feeds(s, 1).values())) for s in (0, 1))), f"{m.id}: seeds must give different samples"

