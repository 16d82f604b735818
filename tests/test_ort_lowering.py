"""The ORT backend's Q/DQ lowering: Relu/ReLU6 outputs in uint8 so ORT fuses QLinearConv, accuracy kept."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from converter.plugins.ort_lowering import lower_for_ort_cpu


def _conv_relu_qdq_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3
    amax = np.float32(4.0)
    inits = [
        numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array(amax / 127, dtype=np.float32), "s"), numpy_helper.from_array(np.array(0, dtype=np.int8), "z"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "lo"), numpy_helper.from_array(np.array(6.0, dtype=np.float32), "hi"),
        numpy_helper.from_array(np.array(2.0 / 127, dtype=np.float32), "sx"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"]),
        helper.make_node("Conv", ["xd", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
        helper.make_node("QuantizeLinear", ["r1", "s", "z"], ["q1"]), helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"]),
        helper.make_node("Conv", ["d1", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_relu6_output_goes_uint8_and_stays_accurate() -> None:
    model = _conv_relu_qdq_conv()
    low = lower_for_ort_cpu(model)
    assert low.lowered == ["r1"] and low.shifted == ["x"]
    onnx.checker.check_model(low.model, full_check=True)
    q1 = next(n for n in low.model.graph.node if n.output[0] == "q1")
    inits = {t.name: numpy_helper.to_array(t) for t in low.model.graph.initializer}
    assert inits[q1.input[2]].dtype == np.uint8 and int(inits[q1.input[2]]) == 0
    assert np.isclose(float(inits[q1.input[1]]), 4.0 / 255)
    xq = next(n for n in low.model.graph.node if n.output[0] == "xq")
    assert inits[xq.input[2]].dtype == np.uint8 and int(inits[xq.input[2]]) == 128, "other pairs: same grid as uint8/128"
    assert np.isclose(float(inits[xq.input[1]]), 2.0 / 127)
    assert "s" not in inits and "z" not in inits, "unread int8 parameters are removed"
    assert model.graph.node[4].input[1] == "s", "the input model is not changed"
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3, 16, 16)).astype(np.float32)
    reference = _run(_drop_qdq(model), x)
    err_canonical = np.abs(_run(model, x) - reference).mean()
    err_lowered = np.abs(_run(low.model, x) - reference).mean()
    assert err_lowered <= err_canonical  # same range [0, amax], finer steps


def test_shift_to_uint8_128_is_exact() -> None:
    """int8/0 -> uint8/128 with the same scale is the same quantization grid: identical outputs."""
    model = _conv_relu_qdq_conv()
    model.graph.node[3].op_type = "Sin"  # not non-negative: the pair after it is only shifted
    del model.graph.node[3].input[1:]
    low = lower_for_ort_cpu(model)
    assert low.lowered == [] and sorted(low.shifted) == ["r1", "x"]
    x = np.random.default_rng(2).uniform(-3, 3, (2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(low.model, x), _run(model, x), rtol=0, atol=1e-5)


def _drop_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float model: every DequantizeLinear(QuantizeLinear(t)) replaced by t."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    src = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    alias = {n.output[0]: src[n.input[0]] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    keep = [n for n in m.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    for n in keep:
        for i, x in enumerate(n.input):
            n.input[i] = alias.get(x, x)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def test_ort_fuses_the_lowered_conv(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def fused_ops(model: onnx.ModelProto, name: str) -> list[str]:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp_path / name)
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node]

    model = _conv_relu_qdq_conv()
    assert fused_ops(lower_for_ort_cpu(model).model, "low.onnx").count("QLinearConv") > fused_ops(model, "canon.onnx").count("QLinearConv")
