"""``convert bench``: statistics on known arrays, the timing loop on a fake clock, and the real CLI on tiny models.

No assertion compares two timings (nothing here can flake on a loaded machine): only the shape of the
report and the order the statistics must have (min <= median <= p90 <= p99 <= max).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter import reporting
from converter.backend_api import Availability, Backend, TensorSpec
from converter.benchmark import BatchResult, LatencyStats, TimingPlan, latency_stats, ratios, time_interleaved
from converter.benchmark.command import open_artifact
from converter.benchmark.shapes import default_batch, merge_interfaces, parse_batches, shape_at
from converter.cli import main
from converter.errors import UsageError
from converter.hookspecs import hookimpl
from converter.plugin_manager import load_plugins

FAST = ["--iterations", "12", "--warmup", "1"]
LATENCY_KEYS = {"min", "mean", "median", "p90", "p99", "max", "std"}


def _model(path: Path, x_shape: list[Any], k: int = 16, dtype: int = TensorProto.FLOAT) -> Path:
    """MatMul + Relu, x of ``x_shape`` (last dim ``k``) → y."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, 8)).astype(np.float32 if dtype == TensorProto.FLOAT else np.float16), "w")
    y_shape = [*x_shape[:-1], 8]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "bench_test",
        [helper.make_tensor_value_info("x", dtype, x_shape)], [helper.make_tensor_value_info("y", dtype, y_shape)], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def dyn(tmp_path: Path) -> Path:
    return _model(tmp_path / "dyn.onnx", ["N", 16])


@pytest.fixture
def fixed(tmp_path: Path) -> Path:
    return _model(tmp_path / "fixed.onnx", [1, 16])


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str, pattern: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("convert: error: ") and pattern in lines[0], lines[0]


def _check_results(results: list[dict[str, Any]], batches: list[int]) -> None:
    assert [r["batch"] for r in results] == batches
    for r in results:
        assert set(r) == {"batch", "iterations", "latency_ms", "throughput_per_s", "queries_per_s"}
        lat = r["latency_ms"]
        assert set(lat) == LATENCY_KEYS
        assert lat["median"] > 0 and lat["std"] >= 0
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert r["throughput_per_s"] == pytest.approx(r["batch"] * 1000 / lat["median"])
        assert r["queries_per_s"] == pytest.approx(1000 / lat["median"])


# --- statistics and the timing loop (pure logic) ---


def test_latency_stats_of_1_to_100_ms() -> None:
    s = latency_stats([i * 1_000_000 for i in range(1, 101)])
    assert s.iterations == 100
    assert (s.min, s.max, s.mean, s.median) == (1.0, 100.0, 50.5, 50.5)
    assert s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)  # numpy 'linear': rank (n - 1) * q
    assert s.std == pytest.approx(math.sqrt((100**2 - 1) / 12))  # population std of 1..100
    assert set(s.to_json()) == LATENCY_KEYS


def test_latency_stats_single_sample_and_empty() -> None:
    s = latency_stats(np.array([2_500_000]))
    assert s.min == s.median == s.p99 == s.max == 2.5 and s.std == 0
    with pytest.raises(ValueError):
        latency_stats([])


def test_throughput_and_ratios() -> None:
    def res(batch: int, median: float) -> BatchResult:
        return BatchResult(batch, LatencyStats(10, median, median, median, median, median, median, 0.0))

    a, b = res(8, 2.0), res(8, 4.0)
    assert a.throughput_per_s == pytest.approx(4000) and a.queries_per_s == pytest.approx(500)
    assert ratios(a, b) == {"batch": 8, "latency": pytest.approx(2.0), "throughput": pytest.approx(0.5)}
    with pytest.raises(ValueError):
        ratios(a, res(1, 2.0))


def test_timing_plan_validation() -> None:
    for bad in ({}, {"iterations": 3, "duration_s": 1.0}, {"iterations": 0}, {"duration_s": 0.0}, {"duration_s": math.inf}):
        with pytest.raises(ValueError):
            TimingPlan(**bad)
    assert TimingPlan(iterations=5).to_json() == {"iterations": 5, "duration_s": None}


class FakeClock:
    """Each reading advances 1 ms."""

    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        self.t += 1_000_000
        return self.t


def test_time_interleaved_alternates_and_counts() -> None:
    calls: list[str] = []
    rounds: list[int] = []
    samples = time_interleaved([lambda: calls.append("A"), lambda: calls.append("B")], TimingPlan(iterations=3), warmup=2,
                               clock=FakeClock(), on_round=lambda: rounds.append(1))
    assert calls == ["A", "B"] * 2 + ["A", "B", "B", "A", "A", "B"]
    assert [len(s) for s in samples] == [3, 3] and len(rounds) == 3
    assert all(v == 1_000_000 for s in samples for v in s)


def test_time_interleaved_duration_keeps_a_minimum() -> None:
    # 1 ms per clock reading, 3 readings a round (the stop check, before and after the run): 3 ms a round
    samples = time_interleaved([lambda: None], TimingPlan(duration_s=0.001, min_iterations=10), warmup=0, clock=FakeClock())
    assert len(samples[0]) == 10
    samples = time_interleaved([lambda: None], TimingPlan(duration_s=0.1, min_iterations=1), warmup=0, clock=FakeClock())
    assert len(samples[0]) == 33  # 100 ms / 3 ms


# --- batch sizes and shapes ---


@pytest.mark.parametrize("text", ["0", "-1", "a", "", "1,,8", "1.5", "+2"])
def test_parse_batches_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="positive integers"):
        parse_batches(text)


def test_parse_batches_and_default_batch() -> None:
    assert parse_batches("1, 8,32,8") == [1, 8, 32] and parse_batches(None) is None
    dyn, fixed4 = TensorSpec("x", "float32", ("N", 16)), TensorSpec("x", "float32", (4, 16))
    assert default_batch([dyn], {}, None) == 1
    assert default_batch([fixed4], {}, None) == 4
    assert default_batch([dyn], {"x": (6, 16)}, None) == 6
    assert default_batch([dyn], {}, {"x": np.zeros((3, 16), np.float32)}) == 3


def test_shape_at() -> None:
    seq = TensorSpec("ids", "int64", ("N", "S", 4))
    with pytest.raises(UsageError, match=r"--input-shapes ids:8x\?x4"):
        shape_at(seq, 8, {})
    assert shape_at(seq, 8, {"ids": (1, 128, 4)}) == (8, 128, 4)
    with pytest.raises(UsageError, match="dim 2 is fixed at 4"):
        shape_at(seq, 8, {"ids": (1, 128, 5)})
    with pytest.raises(UsageError, match="fixed batch of 2"):
        shape_at(TensorSpec("x", "float32", (2, 3)), 8, {})


def test_merge_interfaces() -> None:
    a = [TensorSpec("x", "float32", ("N", 16))]
    assert merge_interfaces(a, [TensorSpec("x", "float32", (1, 16))], "b") == [TensorSpec("x", "float32", (1, 16))]
    for other in ([TensorSpec("z", "float32", ("N", 16))], [TensorSpec("x", "float16", ("N", 16))], [TensorSpec("x", "float32", ("N", 8))]):
        with pytest.raises(UsageError, match="--compare b"):
            merge_interfaces(a, other, "b")


# --- the real command ---


def test_bench_is_registered() -> None:
    assert "bench" in load_plugins(entry_points_enabled=False).commands


def test_text_table_has_each_batch(capsys: pytest.CaptureFixture[str], dyn: Path) -> None:
    rc, out, _ = _run(capsys, "bench", dyn, "--batch", "1,8,32", *FAST)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"bench {dyn} (backend ort")
    assert lines[1].split()[:7] == ["batch", "median", "ms", "p90", "ms", "p99", "ms"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["1", "8", "32"]
    assert "method 'linear'" in lines[-1]


def test_json_report(capsys: pytest.CaptureFixture[str], dyn: Path) -> None:
    rc, out, _ = _run(capsys, "bench", dyn, "--batch", "1,4", "--duration", "0.05", "--json")
    assert rc == 0
    doc = json.loads(out)  # progress never reaches stdout
    reporting.validate(doc)
    assert set(doc) == {"schema", "command", "versions", "artifact", "backend", "threads", "warmup", "timing", "results", "compare"}
    assert (doc["schema"], doc["command"], doc["artifact"], doc["backend"]) == ("converter.report/1", "bench", str(dyn), "ort")
    assert doc["warmup"] == 10 and doc["timing"] == {"iterations": None, "duration_s": 0.05} and doc["compare"] is None
    assert isinstance(doc["threads"], int)
    _check_results(doc["results"], [1, 4])
    assert all(r["iterations"] >= 10 for r in doc["results"])


def test_compare_gives_ratios_per_batch(capsys: pytest.CaptureFixture[str], tmp_path: Path, dyn: Path) -> None:
    other = _model(tmp_path / "other.onnx", ["B", 16])
    rc, out, _ = _run(capsys, "bench", dyn, "--compare", other, "--batch", "1,2,8", *FAST, "--json")
    assert rc == 0
    doc = json.loads(out)
    reporting.validate(doc)
    cmp = doc["compare"]
    assert set(cmp) == {"artifact", "backend", "results", "ratios"} and cmp["artifact"] == str(other)
    _check_results(doc["results"], [1, 2, 8])
    _check_results(cmp["results"], [1, 2, 8])
    for q, a, b in zip(cmp["ratios"], doc["results"], cmp["results"]):
        assert set(q) == {"batch", "latency", "throughput"} and q["batch"] == a["batch"]
        assert q["latency"] == pytest.approx(b["latency_ms"]["median"] / a["latency_ms"]["median"])
        assert q["throughput"] == pytest.approx(b["throughput_per_s"] / a["throughput_per_s"])
    rc, out, _ = _run(capsys, "bench", dyn, "--compare", other, "--batch", "1,2", *FAST)
    assert rc == 0 and "ratios are B / A" in out
    rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] == ["B"] and "=" not in ln]
    assert len(rows) == 2 and all(len(r) == 9 for r in rows)  # B, 5 latencies, throughput, 2 ratios


def test_compare_refuses_other_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path, dyn: Path) -> None:
    other = _model(tmp_path / "wide.onnx", ["N", 32], k=32)
    rc, _, err = _run(capsys, "bench", dyn, "--compare", other, *FAST)
    assert rc == 2
    _one_error_line(err, "--compare")


@pytest.mark.parametrize("batch", ["0", "-1", "a", "1,x"])
def test_bad_batch_exits_2(capsys: pytest.CaptureFixture[str], dyn: Path, batch: str) -> None:
    rc, out, err = _run(capsys, "bench", dyn, f"--batch={batch}")
    assert rc == 2 and out == ""
    _one_error_line(err, "--batch")


def test_fixed_batch_model(capsys: pytest.CaptureFixture[str], fixed: Path) -> None:
    rc, out, err = _run(capsys, "bench", fixed, "--batch", "8", *FAST)
    assert rc == 2 and out == ""
    _one_error_line(err, "input 'x' has a fixed batch of 1")
    rc, out, _ = _run(capsys, "bench", fixed, *FAST, "--json")  # default: the model's batch
    assert rc == 0 and [r["batch"] for r in json.loads(out)["results"]] == [1]


def test_missing_and_unreadable_artifacts_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model\n")
    for path, pattern in ((tmp_path / "nope.onnx", "not found"), (tmp_path, "not a file"), (notes, "cannot open")):
        rc, out, err = _run(capsys, "bench", path, *FAST)
        assert rc == 2 and out == "", path
        _one_error_line(err, pattern)


class _NoDevice(Backend):
    name = "nodevice"
    summary = "a backend whose device is missing"

    @classmethod
    def availability(cls) -> Availability:
        return Availability(False, "no such device here")

    def emit(self, model, ctx):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def load(self, artifact):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class _NoDevicePlugin:
    @hookimpl
    def converter_register_backends(self, registry) -> None:  # type: ignore[no-untyped-def]
        registry.add(_NoDevice)


def test_unavailable_backend_exits_3(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, dyn: Path) -> None:
    monkeypatch.setattr("converter.cli.load_plugins", lambda *a, **k: load_plugins(entry_points_enabled=False, extra={"nodevice": _NoDevicePlugin()}))
    rc, _, err = _run(capsys, "bench", dyn, "--backend", "nodevice", *FAST)
    assert rc == 3
    _one_error_line(err, "no such device here")


def test_threads(capsys: pytest.CaptureFixture[str], tmp_path: Path, dyn: Path) -> None:
    art = tmp_path / "art.onnx"
    assert main([str(dyn), "-b", "ort", "-o", str(art)]) == 0
    capsys.readouterr()
    plugins = load_plugins(entry_points_enabled=False)
    opened = open_artifact(art, None, 1, plugins)  # the manifest records threads 0: --threads wins, in memory only
    assert opened.backend == "ort" and opened.threads == 1
    assert opened.runner.session.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]
    assert json.loads(Path(str(art) + ".manifest.json").read_text())["threads"] == 0
    rc, out, err = _run(capsys, "bench", dyn, "--backend", "onnx", "--threads", "2", *FAST, "--json")
    assert rc == 0 and json.loads(out)["threads"] is None and "takes no thread count" in err


def test_input_shapes_and_npz_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    seq = _model(tmp_path / "seq.onnx", ["N", "S", 16])
    rc, _, err = _run(capsys, "bench", seq, *FAST)
    assert rc == 2
    _one_error_line(err, "--input-shapes x:1x?x16")
    rc, out, _ = _run(capsys, "bench", seq, "--input-shapes", "x:1x5x16", "--batch", "2,3", *FAST, "--json")
    assert rc == 0 and [r["batch"] for r in json.loads(out)["results"]] == [2, 3]
    npz = tmp_path / "feeds.npz"
    np.savez(npz, x=np.ones((3, 5, 16), np.float32))
    rc, out, _ = _run(capsys, "bench", seq, "--inputs", npz, *FAST, "--json")  # default batch: the arrays' 3
    assert rc == 0 and [r["batch"] for r in json.loads(out)["results"]] == [3]
    rc, out, _ = _run(capsys, "bench", seq, "--inputs", npz, "--batch", "8", *FAST)  # repeated to 8
    assert rc == 0


def test_report_page(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dyn: Path) -> None:
    seen: list[dict[str, Any]] = []
    import converter.html_report

    monkeypatch.setattr(converter.html_report, "render", lambda doc: seen.append(doc) or "<html>bench</html>", raising=False)
    page = tmp_path / "bench.html"
    rc, out, _ = _run(capsys, "bench", dyn, "--batch", "1,2", *FAST, "--report", page)
    assert rc == 0 and page.read_text() == "<html>bench</html>" and f"wrote {page}" in out
    assert seen[0]["command"] == "bench" and [r["batch"] for r in seen[0]["results"]] == [1, 2]
    rc, _, err = _run(capsys, "bench", dyn, *FAST, "--report", dyn)  # the artifact is never overwritten
    assert rc == 2 and not seen[1:]
    _one_error_line(err, "is the input file")


def test_report_page_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path, dyn: Path) -> None:
    page = tmp_path / "bench.html"
    rc, out, _ = _run(capsys, "bench", dyn, "--batch", "1,2", *FAST, "--report", page, "--json")
    assert rc == 0 and page.read_text().lstrip().lower().startswith("<!doctype html")
    reporting.validate(json.loads(out))
