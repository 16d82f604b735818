"""AdaRound (passes/qdq/_adaround.py): each quantized layer's int8 weights rounded up or down to reconstruct its float output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.ort_session import make_session, run_session, session_options
from converter.passes.qdq import QdqOptions, QdqPass
from converter.passes.qdq._adaround import BUDGET, _output, _patches, _rows, adaround
from converter.passes.qdq._adaround_layers import find_layers
from tests.test_pass_qdq import _ctx

torch = pytest.importorskip("torch")

LAYERS = {"conv1", "dw", "conv3", "head"}


def small_cnn() -> onnx.ModelProto:
    """Conv -> Relu -> depthwise Conv (stride 2) -> Relu -> Conv 1x1 -> GlobalAveragePool -> Flatten -> Gemm (transB)."""
    rng = np.random.default_rng(3)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)), "b1": rng.standard_normal(8) * 0.1,
        "wd": rng.standard_normal((8, 1, 3, 3)) * 0.4, "bd": rng.standard_normal(8) * 0.1,
        "w3": rng.standard_normal((16, 8, 1, 1)) * 0.3,
        "wh": rng.standard_normal((10, 16)) * 0.3, "bh": np.zeros(10),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["c2"], name="dw", group=8, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wh", "bh"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _data(seed: int, n: int) -> np.ndarray:
    """Images with neighbouring pixels alike (upsampled 5x5 noise, plus a little fine noise): with independent inputs round-to-nearest is already the best rounding."""
    rng = np.random.default_rng(seed)
    coarse = np.kron(rng.standard_normal((n, 3, 5, 5)), np.ones((1, 1, 2, 2)))
    return (2.0 * coarse + 0.3 * rng.standard_normal((n, 3, 10, 10))).astype(np.float32)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _exact(model: onnx.ModelProto):
    so = session_options()
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    return make_session(model, options=so)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _int8(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) > 1}


def _batches(x: np.ndarray, size: int = 8):
    return lambda: ({"x": x[i:i + size]} for i in range(0, len(x), size))


def _quantized(model: onnx.ModelProto, tmp_path: Path, x: np.ndarray) -> onnx.ModelProto:
    np.savez(tmp_path / "cal.npz", x=x)
    return QdqPass(QdqOptions(calibrator="minmax", bias_correction="off")).run(_copy(model), _ctx(tmp_path / "cal.npz")).model


def test_adaround_lowers_each_layer_s_error_and_keeps_the_int8_grid(tmp_path: Path) -> None:
    model = small_cnn()
    x = _data(0, 64)
    nearest = _quantized(model, tmp_path, x)
    learned = _copy(nearest)
    layers = [n.name for n in learned.graph.node if n.op_type in ("Conv", "Gemm")]
    report = adaround(model, learned, layers, _batches(x), 64, 400, None)
    assert set(report.done) == LAYERS and not report.skipped, (report.done, report.skipped)
    for name, (before, after, flipped) in report.done.items():
        assert after <= before and 0.0 <= flipped < 0.5, (name, before, after, flipped)
    improved = [n for n, (b, a, _) in report.done.items() if a < b]
    assert {"conv1", "dw", "conv3"} <= set(improved), report.done
    # every weight is floor(w/s) or floor(w/s) + 1: at most one step from round-to-nearest, and inside [-127, 127]
    old, new = _int8(nearest), _int8(learned)
    assert set(old) == set(new) and len(old) == 4
    changed = 0
    for name in old:
        diff = np.abs(new[name].astype(np.int32) - old[name].astype(np.int32))
        assert diff.max() <= 1 and np.abs(new[name].astype(np.int32)).max() <= 127, name
        changed += int(diff.sum())
    assert changed > 0
    onnx.checker.check_model(learned, full_check=True)
    # on held-out data the network is at least as close to the float one as with round-to-nearest
    held = _data(1, 64)
    y = run_session(make_session(model), {"x": held})["y"]
    cos_nearest = _cos(y, run_session(_exact(nearest), {"x": held})["y"])
    cos_learned = _cos(y, run_session(_exact(learned), {"x": held})["y"])
    assert cos_learned >= cos_nearest, (cos_nearest, cos_learned)
    facts = json.loads(json.dumps(report.facts()))
    assert facts["layers"] == 4 and facts["iterations"] == 400 and facts["rows"] > 0 and 0 < facts["flipped"] < 0.5, facts


def test_adaround_time_budget_zero_skips_every_layer(tmp_path: Path) -> None:
    model = small_cnn()
    x = _data(0, 16)
    nearest = _quantized(model, tmp_path, x)
    learned = _copy(nearest)
    report = adaround(model, learned, [n.name for n in learned.graph.node], _batches(x), 16, 100, 0.0)
    assert not report.done and set(report.skipped) == LAYERS and set(report.skipped.values()) == {BUDGET}, report.skipped
    assert learned.SerializeToString() == nearest.SerializeToString()
    assert report.facts()["skipped"] == report.skipped
    # layers named by their output tensors, as the pass names them for bias correction
    outputs = {"c1", "c2", "c3", "y"}
    report = adaround(model, learned, sorted(outputs), _batches(x), 16, 100, 0.0)
    assert set(report.skipped) == outputs, report.skipped


def _single(op: str, w: np.ndarray, x_shape: list, **attrs: object) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", "w"], ["c"], name="layer", **attrs)
    relu = helper.make_node("Relu", ["c"], ["y"], name="act")
    graph = helper.make_graph([node, relu], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class _All:
    """A generator stand-in that picks every output position, in order."""

    def choice(self, n: int, size: int, replace: bool) -> np.ndarray:
        return np.arange(n)


GEOMETRIES = [
    ("Conv", (6, 4, 3, 3), [2, 4, 9, 9], {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}),
    ("Conv", (6, 2, 3, 3), [2, 4, 9, 9], {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("Conv", (4, 1, 5, 5), [2, 4, 9, 9], {"group": 4, "auto_pad": "SAME_LOWER"}),
    ("Conv", (5, 3, 3), [2, 3, 11], {"strides": [2], "pads": [2, 1], "dilations": [2]}),
    ("Gemm", (7, 5), [4, 5], {"transB": 1, "alpha": 0.5}),
    ("Gemm", (5, 7), [4, 5], {}),
    ("MatMul", (5, 7), [2, 3, 5], {}),
]


@pytest.mark.parametrize(("op", "shape", "x_shape", "attrs"), GEOMETRIES)
def test_layer_rows_reproduce_the_onnx_layer(tmp_path: Path, op: str, shape: tuple, x_shape: list, attrs: dict) -> None:
    """The rows and the torch layer AdaRound optimizes compute exactly what ONNX Runtime computes for the node."""
    w = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    model = _single(op, w, x_shape, **attrs)
    x = np.random.default_rng(6).standard_normal(x_shape).astype(np.float32)
    quant = _quantized(model, tmp_path, x)
    skipped: dict[str, str] = {}
    (t,) = find_layers(model, quant, ["layer"], skipped)
    assert not skipped and (t.act is None) == (op == "MatMul")
    if op == "Conv":
        rows = np.concatenate([_patches(t, s[:, None, :] if t.conv1d else s, 10**6, _All()) for s in x])  # type: ignore[arg-type]
    else:
        rows = np.concatenate(_rows(t, x, 10**6, _All()))  # type: ignore[arg-type]
    out = _output(t, torch.from_numpy(np.ascontiguousarray(rows)), torch.from_numpy(t.float_matrix()),
                  None if t.bias_float is None else torch.from_numpy(t.bias_float)).numpy()
    if t.act is None:  # the MatMul's Relu is not part of its loss
        out = np.maximum(out, 0)
    y = run_session(make_session(model), {"x": x})["y"]
    expected = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1]) if op == "Conv" else y.reshape(-1, y.shape[-1])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_layers_it_cannot_round_are_skipped_with_a_reason(tmp_path: Path) -> None:
    w = np.random.default_rng(5).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = _single("ConvTranspose", w, [2, 4, 6, 6])
    x = np.random.default_rng(6).standard_normal((2, 4, 6, 6)).astype(np.float32)
    quant = _quantized(model, tmp_path, x)
    before = quant.SerializeToString()
    report = adaround(model, quant, ["layer"], _batches(x), 2, 50, None)
    assert report.skipped == {"layer": "ConvTranspose: not expressed"} and not report.done
    assert quant.SerializeToString() == before
    # a weight rewritten since quantization (not round-to-nearest of the float one) is left alone
    conv = _single("Conv", w[:, :3].copy(), [2, 3, 6, 6])
    xq = x[:, :3].copy()
    quant = _quantized(conv, tmp_path, xq)
    int8 = next(t for t in quant.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4)
    values = numpy_helper.to_array(int8).copy()
    values[0, 0, 0, 0] = -values[0, 0, 0, 0] or 5
    int8.CopyFrom(numpy_helper.from_array(values, int8.name))
    report = adaround(conv, quant, ["layer"], _batches(xq), 2, 50, None)
    assert "not the float weight rounded to nearest" in report.skipped["layer"]


def test_qdq_adaround_option_runs_it_in_place_of_bias_correction(tmp_path: Path) -> None:
    x = _data(0, 32)
    np.savez(tmp_path / "cal.npz", x=x)
    result = QdqPass(QdqOptions(calibrator="minmax", adaround=True, adaround_iterations=60, adaround_samples=16)).run(_copy(small_cnn()), _ctx(tmp_path / "cal.npz"))
    facts = result.facts
    assert isinstance(facts["adaround"], dict) and facts["bias_correction"].startswith("skipped: adaround")
    json.dumps(facts["adaround"])
    onnx.checker.check_model(result.model, full_check=True)
