"""Regressions of the ORT lowering found in review: float layers stay float, subgraph reads, the model's interface, defaults."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.convert_job import ConvertRequest, convert
from converter.plugin_manager import load_plugins
from converter.plugins.ort import _backend, _pads, _weights, lower_for_ort_cpu
from tests.test_ort_lowering_acts import SAMPLES, C, Net, _samples


@pytest.fixture(scope="module")
def plugins():  # type: ignore[no-untyped-def]
    return load_plugins(entry_points_enabled=False)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _shared_input_model() -> tuple[onnx.ModelProto, list[str]]:
    """A (Conv) -> y; y read by B (Conv) and C (Conv); C -> Relu -> D (Conv); B + D. The Conv names in order A, B, C, D."""
    n = Net(11, [1, 8, 16, 16])
    y = n.conv("x", 8, C)
    b, c = n.conv(y, C, C), n.conv(y, C, C)
    model = n.model(n.op("Add", [b, n.conv(n.op("Relu", [c]), C, C)]))
    return model, [node.name for node in model.graph.node if node.op_type == "Conv"]


def test_a_float_layer_reading_a_paired_tensor_stays_float(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    """qdq{exclude=[C]}: C keeps reading A's float output and its float weight, though A's output has a pair for B and a Relu takes C to a Q."""
    model, (a, _, c, _) = _shared_input_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", x=_samples(model, SAMPLES, 0))
    calib = {"calib_data": str(tmp_path / "calib.npz")}
    convert(ConvertRequest(model=tmp_path / "m.onnx", pipeline=f"qdq{{exclude=[{c}]}}", backend="onnx", output=tmp_path / "c.onnx", pass_inputs=calib), plugins)
    canonical = onnx.load(str(tmp_path / "c.onnx"))
    float_weight = next(node.input[1] for node in canonical.graph.node if node.name == c)
    assert next(node.input[0] for node in canonical.graph.node if node.name == c) == a, "qdq leaves C float"
    low = lower_for_ort_cpu(canonical, weights="u8")
    conv_c = next(node for node in low.model.graph.node if node.name == c)
    assert list(conv_c.input[:2]) == [a, float_weight], "C reads the float tensor and its float weight"
    assert float_weight not in low.u8_weights and float_weight in {t.name for t in low.model.graph.initializer}
    x = _samples(model, 4, 1)
    assert np.isfinite(_run(low.model, {"x": x})[0]).all()
    convert(ConvertRequest(model=tmp_path / "m.onnx", pipeline=f"qdq{{exclude=[{c}]}}", backend="ort{qdq_weights=u8}", output=tmp_path / "m.ort.onnx",
                           pass_inputs=calib), plugins)
    optimized = onnx.load(str(tmp_path / "m.ort.onnx"))
    float_convs = [node for node in optimized.graph.node if node.op_type in ("Conv", "FusedConv")]
    assert any(float_weight in node.input for node in float_convs), "ORT runs C as a float Conv on its float weight"


def test_weights_to_u8_leaves_a_canonically_float_layer_float() -> None:
    """Even where its input reads a uint8 DequantizeLinear now and a Relu takes it to a Q, a layer float in the canonical graph keeps its float weight."""
    inits = [numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w"), numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]), helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    assert _weights.weights_to_u8(g, float_layers={"c"}) == [] and g.node[2].input[1] == "w"
    assert _weights.weights_to_u8(g) == ["w"], "a layer whose input was dequantized all along: quantized as ORT would"


def _if_model(outer_q_output: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv -> c; If(cond) then c + k else c, with the initializer k read only by the then branch."""
    rng = np.random.default_rng(5)
    shape = [1, 4, 3, 3]
    then_g = helper.make_graph([helper.make_node("Add", ["c", "k"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, shape)])
    else_g = helper.make_graph([helper.make_node("Identity", ["c"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, shape)])
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w"), numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"), numpy_helper.from_array(np.full((1, 4, 1, 1), 2.0, np.float32), "k")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["c"]), helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if outer_q_output:
        outputs.append(helper.make_tensor_value_info("xq", TensorProto.INT8, shape))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                                       helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_an_initializer_only_a_subgraph_reads_is_kept(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    model = _if_model()
    onnx.checker.check_model(model, full_check=True)
    low = lower_for_ort_cpu(model)
    assert low.shifted == ["x"] and "k" in {t.name for t in low.model.graph.initializer}
    x = np.random.default_rng(6).uniform(-2, 2, (1, 4, 3, 3)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        np.testing.assert_allclose(_run(low.model, feeds)[0], _run(model, feeds)[0], rtol=0, atol=1e-5)
    onnx.save(model, str(tmp_path / "if.onnx"))
    convert(ConvertRequest(model=tmp_path / "if.onnx", backend="ort", output=tmp_path / "if.ort.onnx"), plugins)  # ORT refused the graph without k


def test_a_pad_a_subgraph_reads_is_not_folded() -> None:
    pad_amounts = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    body = helper.make_graph([helper.make_node("Identity", ["p"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("Conv", ["p", "w"], ["y"]),
             helper.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=body)]
    g = helper.make_graph(nodes, "g", [], [], [pad_amounts, numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")])
    assert _pads.fold_pads(g) == [] and g.node[0].op_type == "Pad"


def test_a_quantized_graph_output_keeps_its_type() -> None:
    """A QuantizeLinear whose int8 output is a graph output is not retyped to uint8: the model's interface stays."""
    model = _if_model(outer_q_output=True)
    low = lower_for_ort_cpu(model)
    assert low.shifted == [] and low.lowered == []
    q = next(n for n in low.model.graph.node if n.output[0] == "xq")
    assert list(q.input) == ["x", "s", "z"]
    x = np.random.default_rng(7).uniform(-2, 2, (1, 4, 3, 3)).astype(np.float32)
    out = _run(low.model, {"x": x, "cond": np.array(True)})
    assert out[1].dtype == np.int8


def test_refit_is_off_by_default_as_in_the_backend() -> None:
    assert inspect.signature(lower_for_ort_cpu).parameters["refit"].default is False
    assert _backend.OrtOptions().qdq_refit is False
