"""``convert export --dynamic``: any axis dynamic (a [batch, seq] transformer, [batch, samples] audio), both exporters.

The CLI runs in subprocesses (cwd = the repository, so ``tests.export_models`` is importable);
the exports start together in one module fixture and each test reads its result.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from converter.torch_export.dim_names import name_dims
from converter.torch_export.dynamic import check_points, parse_dynamic
from converter.torch_export.inputs import parse_inputs
from tests.test_export import DRIVER, _cli

ROOT = Path(__file__).resolve().parent.parent
M = "tests.export_models:"
SEQ = [M + "seq_transformer", "--input", "ids:1x5:int64:0..99", "--input", "mask:1x5:int64", "--dynamic", "ids:0=batch,1=seq", "--dynamic", "mask:0=batch,1=seq"]
SEQ_TS = [M + "seq_transformer", "--input", "ids:2x1:int64:0..99", "--input", "mask:2x1:int64", "--dynamic", "ids:0=batch,1=seq", "--dynamic", "mask:0=batch,1=seq"]
AUDIO = [M + "audio_tagger", "--input", "audio:1x400", "--dynamic", "audio:0=batch,1=samples"]
TR = [M + "small_transformer", "--input", "ids:1x16:int64:0..99", "--input", "mask:1x16:int64"]

ERRORS = {  # argv after 'export' -> what the one line says
    "unknown input": ([*TR, "--dynamic", "idz:0=batch"], r"--dynamic 'idz:0=batch': no --input is named 'idz' \(inputs: ids, mask\)"),
    "axis out of range": ([*TR, "--dynamic", "ids:0=batch,2=seq"], r"--dynamic 'ids:0=batch,2=seq': axis 2 is out of range for ids, which has rank 2 \(axes 0\.\.1\)"),
    "static and dynamic": ([*TR, "--static", "--dynamic", "ids:1=seq"], r"--static keeps every shape and --dynamic makes axes dynamic; give one or the other"),
    "no colon": ([*TR, "--dynamic", "ids=seq"], r"--dynamic 'ids=seq' must be written NAME:AXIS=SYMBOL"),
    "no equals": ([*TR, "--dynamic", "ids:1"], r"--dynamic 'ids:1': '1' must be AXIS=SYMBOL"),
    "axis not a number": ([*TR, "--dynamic", "ids:x=seq"], r"--dynamic 'ids:x=seq': axis 'x' is not an integer"),
    "symbol not an identifier": ([*TR, "--dynamic", "ids:1=2seq"], r"--dynamic 'ids:1=2seq': symbol '2seq' is not an identifier"),
    "input twice": ([*TR, "--dynamic", "ids:0=batch", "--dynamic", "ids:1=seq"], r"--dynamic 'ids:1=seq': input 'ids' is already given by --dynamic 'ids:0=batch'"),
    "shared symbol, sizes differ": (
        [M + "small_transformer", "--input", "ids:1x16:int64", "--input", "mask:1x12:int64", "--dynamic", "ids:1=seq", "--dynamic", "mask:1=seq"],
        r"--dynamic 'mask:1=seq': 'seq' names one size, but in --input axis 1 of ids is 16 and axis 1 of mask is 12",
    ),
    "sizes of an unknown symbol": ([*TR, "--dynamic", "ids:1=seq", "--sizes", "len=3,4"], r"--sizes names 'len', which is no dynamic axis \(symbols: seq\)"),
    "sizes syntax": ([*TR, "--dynamic", "ids:1=seq", "--sizes", "seq:3"], r"--sizes 'seq:3' must be written SYMBOL=A,B"),
    "batches without batch": ([*TR, "--dynamic", "ids:1=seq", "--batches", "2,3"], r"--batches sets the sizes of 'batch', which --dynamic does not name"),
}
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("export_dynamic")
    cmds = {
        "dynamo": _cli("export", *SEQ, "-o", tmp / "seq.onnx", "--json", "--golden", tmp / "golden_seq", "--then", f"-p infer_shapes,cleanup -b ort -o {tmp / 'seq.ort.onnx'}"),
        "torchscript": _cli("export", *SEQ_TS, "-o", tmp / "seq_ts.onnx", "--exporter", "torchscript", "--sizes", "seq=1,17,9", "--json"),
        "audio": _cli("export", *AUDIO, "-o", tmp / "audio.onnx", "--json"),
        "mismatch": _cli("export", M + "batch_branch", "--input", "x:1x3", "--dynamic", "x:0=n", "--exporter", "torchscript", "-o", tmp / "bb.onnx"),
    }
    cases = [["export", *argv, "-o", str(tmp / "err.onnx")] for argv, _ in ERRORS.values()]
    cmds["errors"] = [sys.executable, "-c", DRIVER, json.dumps(cases)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {k: pool.submit(subprocess.run, c, capture_output=True, text=True, cwd=ROOT, timeout=600) for k, c in cmds.items()}
        results: dict[str, object] = {k: f.result() for k, f in futures.items()}
    results["tmp"] = tmp
    return results


def _ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, (res.returncode, res.stdout[-3000:], res.stderr[-3000:])
    return res


def _report(runs: dict, name: str) -> dict:
    return json.loads(_ok(runs[name]).stdout)


def _dims(vi: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _torch_outputs(ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    import torch

    from tests.export_models import seq_transformer

    with torch.no_grad():
        return [t.numpy() for t in seq_transformer()(torch.from_numpy(np.array(ids)), torch.from_numpy(np.array(mask)))]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dims_are_batch_and_seq_and_ort_matches_torch_at_other_sizes(runs: dict, exporter: str) -> None:
    path = runs["tmp"] / ("seq.onnx" if exporter == "dynamo" else "seq_ts.onnx")
    report = _report(runs, exporter)["export"]
    assert report["exporter"] == exporter and report["dynamic_axes"] == {"ids": {"0": "batch", "1": "seq"}, "mask": {"0": "batch", "1": "seq"}}
    model = onnx.load(path)
    assert {vi.name: _dims(vi) for vi in [*model.graph.input, *model.graph.output]} == {
        "ids": ["batch", "seq"], "mask": ["batch", "seq"], "output_0": ["batch", "seq", 32], "output_1": ["batch", 4],
    }
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for batch, seq in [(1, 5), (3, 17)]:
        ids = rng.integers(0, 100, size=(batch, seq)).astype(np.int64)
        mask = (rng.random((batch, seq)) > 0.3).astype(np.int64)
        got = sess.run(None, {"ids": ids, "mask": mask})
        for g, want in zip(got, _torch_outputs(ids, mask), strict=True):
            assert g.shape == want.shape
            np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)


def test_dynamo_report_lists_the_sizes_checked_and_golden_then_pass(runs: dict) -> None:
    data, tmp = _report(runs, "dynamo"), runs["tmp"]
    report = data["export"]
    assert report["trace_sizes"] == {"batch": 2, "seq": 5} and report["check_sizes"] == {"batch": [1, 4], "seq": [5, 8]}
    checks = report["verify"]["batches"]
    assert [c["sizes"] for c in checks] == [{"batch": 1, "seq": 5}, {"batch": 4, "seq": 8}] and all(c["passed"] for c in checks)
    assert [c["inputs"] for c in checks] == [{"ids": [1, 5], "mask": [1, 5]}, {"ids": [4, 8], "mask": [4, 8]}]
    from converter.golden import load_case

    case = load_case(tmp / "golden_seq")
    assert [ds.inputs["ids"].shape for ds in case.data_sets] == [(1, 5), (4, 8)]
    for ds in case.data_sets:
        for name, want in zip(["output_0", "output_1"], _torch_outputs(ds.inputs["ids"], ds.inputs["mask"]), strict=True):
            np.testing.assert_array_equal(ds.outputs[name], want)
    golden = data["then"]["golden"]
    assert golden["passed"] and len(golden["data_sets"]) == 2 and (tmp / "seq.ort.onnx").is_file()


def test_torchscript_traces_seq_at_2_and_checks_the_sizes_given(runs: dict) -> None:
    report = _report(runs, "torchscript")["export"]
    assert report["trace_sizes"] == {"batch": 2, "seq": 2}  # --input gives seq 1: torch specializes sizes 0 and 1
    assert report["check_sizes"] == {"batch": [1, 4], "seq": [1, 17, 9]}
    checks = report["verify"]["batches"]
    assert [c["sizes"] for c in checks] == [{"batch": 1, "seq": 1}, {"batch": 4, "seq": 17}, {"batch": 1, "seq": 9}]
    assert report["verify"]["passed"]


def test_audio_samples_axis_dynamo(runs: dict) -> None:
    import torch

    from tests.export_models import audio_tagger

    report = _report(runs, "audio")["export"]
    assert report["check_sizes"] == {"batch": [1, 4], "samples": [400, 403]} and report["verify"]["passed"]
    model = onnx.load(runs["tmp"] / "audio.onnx")
    assert _dims(model.graph.input[0]) == ["batch", "samples"]
    frames, scores = (_dims(o) for o in model.graph.output)
    assert frames[0] == "batch" and "samples" in str(frames[1]) and frames[2] == 16 and scores == ["batch", 6]
    sess = ort.InferenceSession(str(runs["tmp"] / "audio.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 400), (2, 1601)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            want = [t.numpy() for t in audio_tagger()(torch.from_numpy(x))]
        for g, w in zip(sess.run(None, {"audio": x}), want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_mismatch_at_a_checked_size_exits_1_and_writes_nothing(runs: dict) -> None:
    res = runs["mismatch"]
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "traced at n 2 (--input gives 1; torch.export specializes sizes 0 and 1)" in res.stdout
    assert "at n 1 (seed 0): PASS" in res.stdout and "at n 4 (seed 1): FAIL" in res.stdout
    assert res.stderr.strip().splitlines() == ["convert: error: the exported model does not match torch (n 4: output); nothing written (--keep-failed writes it anyway)"]
    assert not (runs["tmp"] / "bb.onnx").exists()


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_bad_dynamic_exits_2_with_one_line(runs: dict, case: str) -> None:
    code, err = json.loads(_ok(runs["errors"]).stdout)[list(ERRORS).index(case)]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("convert: error: "), (code, err)
    assert re.search(ERRORS[case][1], lines[0]), lines[0]
    assert not (runs["tmp"] / "err.onnx").exists()


def test_check_points_and_negative_axes() -> None:
    specs = parse_inputs(["ids:1x5:int64", "mask:1x5:int64"])
    dyn = parse_dynamic(["mask:-1=seq", "ids:0=batch,-1=seq"], specs, static=False)
    assert dyn.axes == {"ids": {0: "batch", 1: "seq"}, "mask": {1: "seq"}} and dyn.symbols == ["batch", "seq"]
    assert dyn.shapes(specs, {"batch": 3, "seq": 7}) == {"ids": (3, 7), "mask": (1, 7)}
    assert check_points({"batch": (1, 4), "seq": (5, 8, 2)}) == [{"batch": 1, "seq": 5}, {"batch": 4, "seq": 8}, {"batch": 1, "seq": 2}]
    assert check_points({}) == [{}]


def test_dims_torch_names_otherwise_are_renamed_to_the_symbols() -> None:
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[s0, s1] ids) => (float[s0, s1, 4] h, float[s0, s1_plus_1] p, float[s10] q) {
            h = Constant <value = float[1] {0.0}> ()
            p = Identity (h)
            q = Identity (h)
        }
    """)
    model.graph.output[1].type.tensor_type.shape.dim[1].dim_param = "s1 + 1"  # torch writes expressions
    dyn = parse_dynamic(["ids:0=batch,1=seq"], parse_inputs(["ids:2x5:int64"]), static=False)
    assert name_dims(model, dyn) == {"s0": "batch", "s1": "seq"}
    assert [_dims(vi) for vi in [*model.graph.input, *model.graph.output]] == [["batch", "seq"], ["batch", "seq", 4], ["batch", "seq + 1"], ["s10"]]
    assert name_dims(model, dyn) == {}  # already the symbols
