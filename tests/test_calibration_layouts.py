"""Calibration data for any input layout: a recurrent state with its samples on axis 1, a scalar given once,
``?axes=`` declared in the npz source, and ``module:function`` dicts fed exactly as yielded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.backend_api import TensorSpec
from converter.calibration.batching import rebatch
from converter.calibration.data import open_source
from converter.errors import UsageError
from tests.conftest import Cli

T, F, H = 5, 4, 6
N = 7  # samples in the npz


def gru_model(batch: str | int = "batch") -> onnx.ModelProto:
    """x [batch, T, F] → MatMul → GRU (initial state h0 [1, batch, H]) → + bias (scalar) → MatMul → y."""
    rng = np.random.default_rng(0)
    w_in = numpy_helper.from_array(rng.standard_normal((F, F)).astype(np.float32), "w_in")
    w = numpy_helper.from_array(rng.standard_normal((1, 3 * H, F)).astype(np.float32) * 0.5, "W")
    r = numpy_helper.from_array(rng.standard_normal((1, 3 * H, H)).astype(np.float32) * 0.5, "R")
    w_out = numpy_helper.from_array(rng.standard_normal((H, 3)).astype(np.float32), "w_out")
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["xm"]),
        helper.make_node("Transpose", ["xm"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("GRU", ["xt", "W", "R", "", "", "h0"], ["", "hn"], hidden_size=H),
        helper.make_node("Add", ["hn", "bias"], ["hb"]),
        helper.make_node("MatMul", ["hb", "w_out"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "gru_state",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, T, F]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, batch, H]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, batch, 3])],
        [w_in, w, r, w_out],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(n: int = N, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, T, F)).astype(np.float32),
        "h0": rng.standard_normal((1, n, H)).astype(np.float32),  # samples on axis 1
        "bias": np.array(0.75, np.float32),  # given once
    }


def reference_amax(model: onnx.ModelProto, runs: list[dict[str, np.ndarray]], tensors: list[str]) -> dict[str, float]:
    """max |t| of each tensor over the runs, from the float model run here directly."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(tensors, 0.0)
    for run in runs:
        for t, value in zip(tensors, session.run(tensors, run)):
            amax[t] = max(amax[t], float(np.abs(value).max()))
    return amax


def per_sample(data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{"x": data["x"][i : i + 1], "h0": data["h0"][:, i : i + 1], "bias": data["bias"]} for i in range(len(data["x"]))]


def scales_in(path: Path) -> dict[str, float]:
    """Activation scales of the quantized artifact: QuantizeLinear input → its scale."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    return {n.input[0]: float((inits | consts)[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def check_scales(out: Path, model: onnx.ModelProto, runs: list[dict[str, np.ndarray]]) -> None:
    got = scales_in(out)
    assert {"x", "hb"} <= set(got), got
    ref = reference_amax(model, runs, sorted(got))
    for t, scale in got.items():
        assert scale == pytest.approx(ref[t] / 127, rel=1e-5), t


@pytest.mark.parametrize("batch", ["batch", 1])
def test_npz_with_the_state_on_axis_1_and_a_scalar_given_once(tmp_path: Path, batch: str | int) -> None:
    model = gru_model(batch)
    onnx.save(model, str(tmp_path / "m.onnx"))
    data = feeds()
    np.savez(tmp_path / "feeds.npz", **data)
    out = tmp_path / "out.onnx"
    res = Cli()(tmp_path / "m.onnx", "-p", "qdq{calibrator=minmax,batch_size=3}", "--calib-data", f"{tmp_path / 'feeds.npz'}?axes=h0:1,bias:none", "-b", "onnx", "-o", out)
    assert res.returncode == 0, res.stderr
    check_scales(out, model, per_sample(data))
    # the model's own layout (dynamic_batch's analysis) needs no declaration
    res = Cli()(tmp_path / "m.onnx", "-p", "qdq{calibrator=minmax}", "--calib-data", tmp_path / "feeds.npz", "-b", "onnx", "-o", tmp_path / "out2.onnx")
    assert res.returncode == 0, res.stderr
    assert scales_in(tmp_path / "out2.onnx") == scales_in(out)


def test_wrong_axes_exit_2_naming_the_input(tmp_path: Path) -> None:
    onnx.save(gru_model(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "feeds.npz", **feeds())
    for axes, named in (("h0:0", "h0"), ("h0:1,bias:0", "bias"), ("h0:3", "h0"), ("nope:1", "nope")):
        res = Cli()(tmp_path / "m.onnx", "-p", "qdq", "--calib-data", f"{tmp_path / 'feeds.npz'}?axes={axes}", "-b", "onnx", "-o", tmp_path / "o.onnx")
        assert res.returncode == 2, (axes, res.stderr)
        assert f"'{named}'" in res.stderr and len(res.stderr.strip().splitlines()) == 1, (axes, res.stderr)
    bad = feeds()
    bad["h0"] = np.moveaxis(bad["h0"], 1, 0).copy()  # samples on axis 0: [N, 1, H]
    np.savez(tmp_path / "axis0.npz", **bad)
    res = Cli()(tmp_path / "m.onnx", "-p", "qdq", "--calib-data", tmp_path / "axis0.npz", "-b", "onnx", "-o", tmp_path / "o.onnx")
    assert res.returncode == 2 and "h0" in res.stderr, res.stderr


MODULE = """
import numpy as np
T, F, H = {T}, {F}, {H}

def runs():
    rng = np.random.default_rng(5)
    for n in (2, 3, 1):
        yield {{"x": rng.standard_normal((n, T, F)).astype(np.float32),
               "h0": rng.standard_normal((1, n, H)).astype(np.float32),
               "bias": np.array(-0.5, np.float32)}}

def wrong_dtype():
    yield {{"x": np.zeros((1, T, F), np.float64), "h0": np.zeros((1, 1, H), np.float32), "bias": np.array(0, np.float32)}}

def wrong_rank():
    yield {{"x": np.zeros((1, T, F), np.float32), "h0": np.zeros((1, H), np.float32), "bias": np.array(0, np.float32)}}

def extra_key():
    yield {{"x": np.zeros((1, T, F), np.float32), "h0": np.zeros((1, 1, H), np.float32), "bias": np.array(0, np.float32), "sr": 1}}
"""


def test_module_function_dicts_are_runs_as_yielded(tmp_path: Path) -> None:
    model = gru_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    (tmp_path / "layout_feeds.py").write_text(MODULE.format(T=T, F=F, H=H))
    cli = Cli(tmp_path)
    out = tmp_path / "out.onnx"
    res = cli(tmp_path / "m.onnx", "-p", "qdq{calibrator=minmax,batch_size=8}", "--calib-data", "layout_feeds:runs", "-b", "onnx", "-o", out, "--json")
    assert res.returncode == 0, res.stderr
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        import layout_feeds

        runs = list(layout_feeds.runs())
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("layout_feeds", None)
    check_scales(out, model, runs)
    for func, key in (("wrong_dtype", "x"), ("wrong_rank", "h0"), ("extra_key", "sr")):
        res = cli(tmp_path / "m.onnx", "-p", "qdq", "--calib-data", f"layout_feeds:{func}", "-b", "onnx", "-o", tmp_path / "o.onnx")
        assert res.returncode == 2 and f"{key}" in res.stderr and len(res.stderr.strip().splitlines()) == 1, (func, res.stderr)


def test_rebatch_cuts_and_joins_each_input_on_its_own_axis(tmp_path: Path) -> None:
    data = feeds()
    np.savez(tmp_path / "f.npz", **data)
    specs = [TensorSpec("x", "float32", ("batch", T, F)), TensorSpec("h0", "float32", (1, "batch", H)), TensorSpec("bias", "float32", ())]
    src = open_source(str(tmp_path / "f.npz"), specs, allow_random=False, samples=N, seed=0, log=__import__("logging").getLogger("t"), axes={"x": 0, "h0": 1, "bias": None})
    batches = list(rebatch(src, 3))
    assert [b["h0"].shape for b in batches] == [(1, 3, H), (1, 3, H), (1, 1, H)]
    assert all(b["bias"].shape == () for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["h0"] for b in batches], axis=1), data["h0"])
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in rebatch(src, 1, exact=True)]), data["x"])
    with pytest.raises(UsageError, match="'h0'"):
        open_source(str(tmp_path / "f.npz"), specs, allow_random=False, samples=N, seed=0, log=__import__("logging").getLogger("t"), axes={"x": 0, "h0": 0, "bias": None})


SILERO = """
import numpy as np

def windows():
    rng = np.random.default_rng(0)
    for _ in range(16):
        yield {"input": (0.1 * rng.standard_normal((1, 512))).astype(np.float32),
               "state": np.zeros((2, 1, 128), np.float32),
               "sr": np.array(16000, np.int64)}
"""


def test_silero_vad_calibrates_with_a_module_function(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("silero-vad is not installed: .venv/bin/pip install silero-vad")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (data / "silero_vad.onnx").is_file():
        pytest.skip("silero-vad has no data/silero_vad.onnx: .venv/bin/pip install silero-vad")
    (tmp_path / "vad_feeds.py").write_text(SILERO)
    res = Cli(tmp_path)(data / "silero_vad.onnx", "-p", "qdq{calibrator=minmax}", "--calib-data", "vad_feeds:windows", "-b", "onnx", "-o", tmp_path / "vad.int8.onnx")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "vad.int8.onnx").is_file()
    flat = data / "silero_vad_16k_op15.onnx"  # the same network without the If around it: its Convs are quantized
    if flat.is_file():
        out = tmp_path / "vad16k.int8.onnx"
        res = Cli(tmp_path)(flat, "-p", "qdq{calibrator=minmax}", "--calib-data", "vad_feeds:windows", "-b", "onnx", "-o", out)
        assert res.returncode == 0, res.stderr
        assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
        # the case: an npz with the state's samples on axis 1 and sr given once, no declaration needed
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "vad.npz", input=(0.1 * rng.standard_normal((16, 512))).astype(np.float32), state=np.zeros((2, 16, 128), np.float32), sr=np.array(16000, np.int64))
        res = Cli()(flat, "-p", "qdq{calibrator=minmax}", "--calib-data", tmp_path / "vad.npz", "-b", "onnx", "-o", tmp_path / "vad_npz.onnx")
        assert res.returncode == 0, res.stderr
