"""qdq{bias_correction=on}: each quantized layer's own output-mean error, measured on the calibration data, moves into its bias."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.ort_session import make_session, run_session, session_options
from converter.passes.qdq import QdqOptions, QdqPass
from tests.test_pass_qdq import _ctx


def coarse_cnn() -> onnx.ModelProto:
    """Conv(bias) -> Relu -> Conv(no bias) -> Relu -> Flatten -> MatMul + Add: each weight row has one outlier (a coarse int8 grid)."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.05
    w1[:, 0, 0, 0] = 1.0
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.05
    w2[:, 0, 1, 1] = 1.0
    wm = (rng.standard_normal((8 * 6 * 6, 5)) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "wm"], ["m"], name="head"),
        helper.make_node("Add", ["m", "bm"], ["y"], name="head_bias"),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(8, np.float32), "b1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(wm, "wm"), numpy_helper.from_array(np.zeros(5, np.float32), "bm")]
    graph = helper.make_graph(nodes, "coarse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _data(seed: int, n: int) -> np.ndarray:
    return (3.0 + np.random.default_rng(seed).standard_normal((n, 3, 8, 8))).astype(np.float32)  # inputs with a large mean


def _exact(model: onnx.ModelProto):
    so = session_options()
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    return make_session(model, options=so)


def _probe(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_bias_correction_cancels_each_layer_s_mean_error(tmp_path: Path) -> None:
    model = coarse_cnn()
    x = _data(0, 32)
    np.savez(tmp_path / "cal.npz", x=x)
    plain = QdqPass(QdqOptions(calibrator="minmax", bias_correction="off")).run(_copy(model), _ctx(tmp_path / "cal.npz"))
    fixed = QdqPass(QdqOptions(calibrator="minmax", bias_correction="on")).run(_copy(model), _ctx(tmp_path / "cal.npz"))
    facts = fixed.facts["bias_correction"]
    assert facts["layers"] == 2 and set(facts["largest_shift"]) == {"conv1", "conv2"}
    assert "head" in facts["skipped"] and "MatMul" in facts["skipped"]["head"]
    conv2 = next(n for n in fixed.model.graph.node if n.name == "conv2")
    assert len(conv2.input) == 3 and conv2.input[2]  # a bias input was created for it
    # conv1 reads the graph input: its quantized output's mean per channel now equals the float one on the calibration data
    ref = run_session(make_session(_probe(model, ["c1"])), {"x": x})["c1"].mean(axis=(0, 2, 3))
    before = run_session(_exact(_probe(plain.model, ["c1"])), {"x": x})["c1"].mean(axis=(0, 2, 3))
    after = run_session(_exact(_probe(fixed.model, ["c1"])), {"x": x})["c1"].mean(axis=(0, 2, 3))
    assert np.abs(after - ref).max() < 1e-4 < np.abs(before - ref).max() / 10, (np.abs(before - ref).max(), np.abs(after - ref).max())
    # and on held-out data the network is closer to the float one
    held = _data(1, 32)
    y = run_session(make_session(model), {"x": held})["y"]
    cos_plain = _cos(y, run_session(_exact(plain.model), {"x": held})["y"])
    cos_fixed = _cos(y, run_session(_exact(fixed.model), {"x": held})["y"])
    assert cos_fixed > cos_plain, (cos_plain, cos_fixed)
    onnx.checker.check_model(fixed.model, full_check=True)


def test_bias_correction_all_includes_matmuls(tmp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=_data(0, 16))
    fixed = QdqPass(QdqOptions(calibrator="minmax", bias_correction="all")).run(coarse_cnn(), _ctx(tmp_path / "cal.npz"))
    assert set(fixed.facts["bias_correction"]["largest_shift"]) == {"conv1", "conv2", "head"}
    bias = numpy_helper.to_array(next(t for t in fixed.model.graph.initializer if t.name == "bm"))
    assert np.abs(bias).max() > 0  # the head's Add constant took the correction


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_scale_search_picks_amax_by_the_layer_output_error(tmp_path: Path) -> None:
    """A calibrator that clips far too much (the 60th percentile): the search, judging the layers' outputs, widens the ranges."""
    from converter.passes.qdq._search import candidates

    assert candidates(2.0, 10.0) == sorted({2.0, 10.0, 8.0, 6.0, 4.5, 3.0, 1.6, 2.5})
    x = _data(0, 32)
    np.savez(tmp_path / "cal.npz", x=x)
    model = coarse_cnn()
    options = {"calibrator": "percentile", "percentile": 60.0, "bias_correction": "off"}
    plain = QdqPass(QdqOptions(**options)).run(_copy(model), _ctx(tmp_path / "cal.npz"))
    searched = QdqPass(QdqOptions(**options, scale_search=True, search_samples=32)).run(_copy(model), _ctx(tmp_path / "cal.npz"))
    facts = searched.facts["scale_search"]
    assert facts["tensors_searched"] == 3 and facts["changed"] == 3, facts
    assert all(v["error_ratio"] < 1.0 and v["amax_to"] > v["amax_from"] for v in facts["largest_gains"].values()), facts
    held = _data(1, 32)
    y = run_session(make_session(model), {"x": held})["y"]
    assert _cos(y, run_session(_exact(searched.model), {"x": held})["y"]) > _cos(y, run_session(_exact(plain.model), {"x": held})["y"])


def test_unnamed_layers_are_corrected_and_searched_too(tmp_path: Path) -> None:
    model = coarse_cnn()
    for n in model.graph.node:
        n.name = ""
    np.savez(tmp_path / "cal.npz", x=_data(0, 16))
    result = QdqPass(QdqOptions(calibrator="minmax", scale_search=True)).run(model, _ctx(tmp_path / "cal.npz"))
    assert result.facts["bias_correction"]["layers"] == 2 and result.facts["scale_search"]["tensors_searched"] == 3


def test_a_broadcast_gemm_bias_is_skipped_not_a_crash(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              initializer=[numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w"), numpy_helper.from_array(np.array([0.5], np.float32), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((16, 8)).astype(np.float32))
    result = QdqPass(QdqOptions()).run(model, _ctx(tmp_path / "cal.npz"))
    assert "broadcast" in result.facts["bias_correction"]["skipped"]["gemm"]


def test_recorded_ranges_leave_out_infinities(tmp_path: Path) -> None:
    """A tensor that holds -inf (a mask) gets its finite range recorded, not [-inf, max] nor a collapsed one."""
    from converter.passes.qdq import read_activation_ranges

    graph = helper.make_graph([helper.make_node("Add", ["x", "mask"], ["a"], name="masked"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
                               helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    mask = np.zeros((16, 4), np.float32)
    mask[:, 3] = -np.inf
    np.savez(tmp_path / "cal.npz", x=x, mask=mask)
    result = QdqPass(QdqOptions()).run(model, _ctx(tmp_path / "cal.npz"))
    ranges = read_activation_ranges(result.model)
    assert ranges["a"]["min"] == pytest.approx(float(x[:, :3].min())) and ranges["a"]["max"] == pytest.approx(float(x[:, :3].max()))


def token_linear() -> onnx.ModelProto:
    """[N, T, 8] -> Reshape [N*T, 8] -> Gemm -> Reshape [N, T, 4]: the form onnxsim gives a transformer's MatMul+Add."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["x2"], name="flatten_tokens"),
             helper.make_node("Gemm", ["x2", "w", "b"], ["y2"], name="gemm"),
             helper.make_node("Reshape", ["y2", "back"], ["y"], name="unflatten_tokens")]
    inits = [numpy_helper.from_array(np.array([-1, 8], np.int64), "flat"), numpy_helper.from_array(np.array([0, -1, 4], np.int64), "back"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_token_wise_gemm_is_corrected_only_as_a_matmul(tmp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=(1.0 + np.random.default_rng(0).standard_normal((16, 6, 8))).astype(np.float32))
    on = QdqPass(QdqOptions(calibrator="minmax")).run(token_linear(), _ctx(tmp_path / "cal.npz"))
    assert "between Reshapes" in on.facts["bias_correction"]["skipped"]["gemm"]
    every = QdqPass(QdqOptions(calibrator="minmax", bias_correction="all")).run(token_linear(), _ctx(tmp_path / "cal.npz"))
    assert set(every.facts["bias_correction"]["largest_shift"]) == {"gemm"}


@pytest.mark.slow
def test_minilm_after_simplify_keeps_its_accuracy(tmp_path: Path) -> None:
    """onnxsim turns MiniLM-L6's MatMul+Add pairs into Reshape -> Gemm -> Reshape; correcting those Gemms' biases
    took the int8 model's cosine from 0.97 to 0.13 (real sentences, held out)."""
    from tests import real_data as rd
    from tests.conftest import Cli
    from tests.real_models import BY_ID

    path = BY_ID["minilm_l6"].path()
    if path is None:
        pytest.skip(BY_ID["minilm_l6"].install_hint)
    calib, held = rd.minilm_split(32, 8)
    np.savez(tmp_path / "cal.npz", **calib)
    out = tmp_path / "m.onnx"
    res = Cli(tmp_path)(path, "-p", "simplify,qdq", "--calib-data", tmp_path / "cal.npz", "-b", "onnx", "-o", out, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    assert any(n.op_type == "Gemm" for n in onnx.load(str(out), load_external_data=False).graph.node)  # onnxsim's form
    ref, got = make_session(onnx.load(str(path))), _exact(onnx.load(str(out)))
    names = [i.name for i in ref.get_inputs()]
    feeds = {k: v for k, v in held.items() if k in names}
    assert _cos(ref.run(None, feeds)[0], got.run(None, feeds)[0]) >= 0.95
