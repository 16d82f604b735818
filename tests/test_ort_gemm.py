"""-b ort: a quantized Gemm whose output stays float (a classifier's head) runs as ORT's MatMulIntegerToFloat, not as a
float Gemm reading a weight dequantized on every run (``plugins/ort/_gemm.py``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.plugins.ort import _lowering, lower_for_ort_cpu

K, N = 64, 10


def _head(trans_b: bool, quantized_output: bool = False, weights: str = "s8") -> onnx.ModelProto:
    """x -> Relu -> Q/DQ -> Gemm(DQ(w int8, per output channel), bias) -> y, as the qdq pass writes a classifier head."""
    rng = np.random.default_rng(3)
    wq = rng.integers(-127, 128, (N, K) if trans_b else (K, N)).astype(np.int8)
    ws = rng.uniform(1e-3, 3e-3, N).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(3 / 127, np.float32), "sa"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(np.zeros(N, np.int8), "wz"),
             numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b"), numpy_helper.from_array(np.array(0.05, np.float32), "so")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("QuantizeLinear", ["r", "sa", "z"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "sa", "z"], ["rd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0 if trans_b else 1),
             helper.make_node("Gemm", ["rd", "w", "b"], ["g" if quantized_output else "y"], transB=int(trans_b))]
    if quantized_output:
        nodes += [helper.make_node("QuantizeLinear", ["g", "so", "z"], ["gq"]), helper.make_node("DequantizeLinear", ["gq", "so", "z"], ["y"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray, unfused: bool = False, saved: Path | None = None) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if unfused:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if saved is not None:
        so.optimized_model_filepath = str(saved)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("weights", ["s8", "u8"])
@pytest.mark.parametrize("trans_b", [True, False])
def test_float_output_gemm_becomes_integer_matmul(trans_b: bool, weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _head(trans_b)
    monkeypatch.setattr(_lowering, "gemms_to_integer_matmul", lambda g: [])
    as_gemm = lower_for_ort_cpu(model, weights=weights).model  # type: ignore[arg-type]  # the same lowering, the Gemm left
    monkeypatch.undo()
    low = lower_for_ort_cpu(model, weights=weights)  # type: ignore[arg-type]
    assert low.gemms_as_matmul == ["y"]
    onnx.checker.check_model(low.model)
    ops = Counter(n.op_type for n in low.model.graph.node)
    assert ops["MatMulIntegerToFloat"] == 1 and ops["Gemm"] == 0 and ops["DequantizeLinear"] == 0, dict(ops)
    x = np.random.default_rng(1).uniform(-1, 3, (8, K)).astype(np.float32)
    expected = _run(as_gemm, x, unfused=True)  # its Q/DQ computed as written
    np.testing.assert_allclose(_run(low.model, x, saved=tmp_path / "rt.onnx"), expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    runtime = Counter(n.op_type for n in onnx.load(str(tmp_path / "rt.onnx")).graph.node)
    assert runtime["MatMulIntegerToFloat"] == 1 and runtime["Gemm"] == 0 and runtime["DequantizeLinear"] == 0, dict(runtime)


def test_a_gemm_with_a_quantized_output_is_left_to_qgemm() -> None:
    low = lower_for_ort_cpu(_head(True, quantized_output=True))
    assert low.gemms_as_matmul == [] and any(n.op_type == "Gemm" for n in low.model.graph.node)


def _linear(bias_shape: tuple[int, ...] = (N,), extra_reader: bool = False) -> onnx.ModelProto:
    """x [B, S, K] -> Q/DQ -> MatMul(DQ(w int8 [K, N], per output column)) -> Add(bias) -> y: a transformer's Linear as qdq writes it."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(np.array(3 / 127, np.float32), "sa"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(rng.integers(-127, 128, (K, N)).astype(np.int8), "wq"),
             numpy_helper.from_array(rng.uniform(1e-3, 3e-3, N).astype(np.float32), "ws"), numpy_helper.from_array(np.zeros(N, np.int8), "wz"),
             numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sa", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "sa", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1), helper.make_node("MatMul", ["xd", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", N])]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["m"], ["n"]))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, ["B", "S", N]))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("weights", ["s8", "u8"])
def test_matmul_and_its_bias_become_one_integer_matmul(weights: str, tmp_path: Path) -> None:
    model = _linear()
    low = lower_for_ort_cpu(model, weights=weights)  # type: ignore[arg-type]
    assert low.matmuls_with_bias == ["y"]
    onnx.checker.check_model(low.model)
    ops = Counter(n.op_type for n in low.model.graph.node)
    assert ops["MatMulIntegerToFloat"] == 1 and ops["Add"] == 0 and ops["MatMul"] == 0, dict(ops)
    x = np.random.default_rng(2).uniform(-3, 3, (2, 5, K)).astype(np.float32)
    expected = _run(model, x, unfused=True)
    np.testing.assert_allclose(_run(low.model, x, saved=tmp_path / "rt.onnx"), expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    runtime = Counter(n.op_type for n in onnx.load(str(tmp_path / "rt.onnx")).graph.node)
    assert runtime["MatMulIntegerToFloat"] == 1 and runtime["Add"] == 0, dict(runtime)


@pytest.mark.parametrize("case", ["bias_per_row", "matmul_read_twice"])
def test_a_matmul_whose_add_is_not_a_bias_keeps_it(case: str) -> None:
    model = _linear(bias_shape=(5, N)) if case == "bias_per_row" else _linear(extra_reader=True)
    low = lower_for_ort_cpu(model)
    assert low.matmuls_with_bias == [] and any(n.op_type == "Add" for n in low.model.graph.node)
