"""bench/make_big_transformer.py at tiny sizes (valid, weights external, runs on ORT, calibration data in the layout
``--calib-data`` reads) and bench/bench_big_model.py's table and results merging on fake rows."""

from __future__ import annotations

import importlib
import signal
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converter.calibration.arrays import NpzSource
from converter.calibration.sources import validate
from converter.graph_info import graph_inputs
from tests.conftest import ROOT

TINY = ["--layers", "2", "--hidden", "64", "--heads", "4", "--ffn", "128", "--vocab", "100", "--seq", "16"]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    """(make_big_transformer, bench_big_model), imported as the scripts see each other (bench/ on sys.path)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("make_big_transformer"), importlib.import_module("bench_big_model")


def test_tiny_model_is_valid_keeps_its_weights_outside_and_runs(bench, tmp_path: Path) -> None:
    gen, harness = bench
    path = tmp_path / "tiny.onnx"
    assert gen.main(["--out", str(path), *TINY, "--calib", "4"]) == 0
    onnx.checker.check_model(str(path), full_check=True)

    data = tmp_path / "tiny.onnx.data"
    model = onnx.load(str(path), load_external_data=False)
    assert path.stat().st_size < 32 * 1024 < data.stat().st_size
    params = 0
    for t in model.graph.initializer:
        nbytes = int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        if t.data_type == onnx.TensorProto.FLOAT and t.dims:  # the float constants are scalars
            params += int(np.prod(t.dims))
        if nbytes < gen.INLINE_LIMIT:
            continue
        info = {e.key: e.value for e in t.external_data}
        assert t.data_location == onnx.TensorProto.EXTERNAL, t.name
        assert info["location"] == data.name and int(info["offset"]) % 4096 == 0 and int(info["length"]) == nbytes
        assert int(info["offset"]) + nbytes <= data.stat().st_size
    sizes = gen.Sizes(2, 64, 4, 128, 100, 16)
    assert params == sizes.params() == 74_496
    assert 4 * params <= harness.weights_bytes(path) < 4 * params + 1024  # + the shape constants
    assert harness.check_output(path) == ""
    assert gen.Sizes().params() * 4 > 2**31  # the defaults are over protobuf's 2 GB limit

    calib = tmp_path / "tiny.calib.npz"
    validate(NpzSource(calib), graph_inputs(model))  # what convert --calib-data checks before calibrating
    with np.load(calib) as z:
        feeds = {k: z[k] for k in z.files}
    assert {k: (v.shape, v.dtype) for k, v in feeds.items()} == {k: ((4, 16), np.int64) for k in feeds}
    mask = feeds["attention_mask"]
    assert mask[:, 0].all() and (np.diff(mask, axis=1) <= 0).all() and (feeds["input_ids"][mask == 0] == 0).all()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for i in range(4):
        (y,) = session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})
        assert y.shape == (1, 16, 64) and np.isfinite(y).all()


def _row(tool: str, outcome: str, **values: object) -> dict:
    empty = {k: None for k in ("wall_s", "peak_rss_gib", "rss_over_weights", "output_gib", "max_abs_err")}
    about = {"command": f"{tool} MODEL OUT", "version": "1.0", "model": "/m/big.onnx", "weights_bytes": 2**31}
    return {"tool": tool, "outcome": outcome} | about | empty | values


def test_table_and_merge_on_fake_results(bench, tmp_path: Path) -> None:
    _, harness = bench
    results = tmp_path / "big.json"
    first = [
        _row("onnxslim", "failed: killed (out of memory)", wall_s=12.345, peak_rss_gib=23.5),
        _row("polygraphy", "unavailable: polygraphy is not installed"),
    ]
    harness.merge(results, first)
    ok = _row("onnxsim", "ok", wall_s=61.0, peak_rss_gib=5.0, rss_over_weights=2.5, output_gib=2.28, max_abs_err=0.0)
    merged = harness.merge(results, [ok, _row("onnxslim", "timeout", wall_s=1800.2)])
    assert set(merged["rows"]) == {"onnxsim", "onnxslim", "polygraphy"}

    text = harness.markdown_table(merged)
    lines = text.splitlines()
    assert lines[0] == "| tool | outcome | wall s | peak RSS GiB | RSS ÷ weights | output GiB | max abs err |"
    assert lines[2] == "| onnxsim | ok | 61.0 | 5.00 | 2.50x | 2.28 | 0 |"  # the benchmark's tool order
    assert lines[3] == "| onnxslim | timeout | 1800.2 | - | - | - | - |"  # rerun: the newer row replaces the old
    assert lines[4].startswith("| polygraphy | unavailable: polygraphy is not installed | - |")
    assert "model /m/big.onnx: 2.00 GiB of weights" in lines
    assert "- onnxsim 1.0: `onnxsim MODEL OUT`" in lines


def test_outcomes(bench, tmp_path: Path) -> None:
    _, harness = bench
    log = tmp_path / "log.txt"
    log.write_text("loading\nValueError: Message onnx.ModelProto exceeds maximum protobuf size of 2GB\nbye\n")
    kill = -signal.SIGKILL
    assert harness._outcome(0, 5.0, 10.0, [], log) == "ok"
    assert harness._outcome(kill, 10.2, 10.0, [], log) == "timeout"
    oom = ["Out of memory: Killed process 42 (python)"]
    assert harness._outcome(kill, 3.0, 10.0, oom, log) == "failed: killed (out of memory)"
    assert harness._outcome(kill, 3.0, 10.0, [], log) == "failed: killed (SIGKILL)"
    error = "ValueError: Message onnx.ModelProto exceeds maximum protobuf size of 2GB"
    assert harness._outcome(1, 3.0, 10.0, [], log) == f"failed: exit 1: {error}"
