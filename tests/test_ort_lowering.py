"""The ORT backend's Q/DQ lowering: Relu/ReLU6 outputs in uint8 so ORT fuses QLinearConv, accuracy kept.

Weights: int8 (U8S8) where ORT's U8S8 kernels are exact, uint8/128 (U8U8) where they
saturate (x86-64 without VNNI). Every test here holds on either kind of CPU: the CPU
enters only through ``u8s8_is_exact``, which the tests of ``auto`` replace.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from converter.plugins.ort import _cpu, _lowering, lower_for_ort_cpu


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


def _run(model: onnx.ModelProto, x: np.ndarray, level: str = "ORT_ENABLE_ALL") -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _saturating_conv(relu: bool) -> tuple[onnx.ModelProto, np.ndarray, float]:
    """(model, input, output scale): [Relu ->] Q/DQ -> Conv (int8 per-channel weights via DQ) -> Q/DQ, canonical int8.

    The input lies in [3, 4] of the activation range [-4, 4] (uint8 225..255 once lowered)
    and every weight has |w| in [64, 127], one sign per output channel: two adjacent u8*s8
    products add up to more than 32767, where ORT's non-VNNI U8S8 kernels saturate.
    """
    rng = np.random.default_rng(3)
    cin, cout, amax = 16, 8, 4.0
    wq = rng.integers(64, 128, (cout, cin, 3, 3)).astype(np.int8)
    wq[::2] *= -1
    ws = rng.uniform(1e-3, 2e-3, cout).astype(np.float32)
    s_out = cin * 9 * amax * float(ws.max())  # |y| <= cin*9 * amax * 127*max(ws): amax_out / 127
    inits = [
        numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
        numpy_helper.from_array(np.array(amax / 127, np.float32), "sa"), numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(np.array(s_out, np.float32), "so"),
    ]
    nodes = [
        helper.make_node("Relu" if relu else "Identity", ["x"], ["a"]),
        helper.make_node("QuantizeLinear", ["a", "sa", "z"], ["aq"]), helper.make_node("DequantizeLinear", ["aq", "sa", "z"], ["ad"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("Conv", ["ad", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "so", "z"], ["cq"]), helper.make_node("DequantizeLinear", ["cq", "so", "z"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", cin, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", cout, 8, 8])], inits)
    x = rng.uniform(3.0, 4.0, (2, cin, 8, 8)).astype(np.float32)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), x, s_out


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_relu6_output_goes_uint8_and_stays_accurate() -> None:
    """With ``auto`` on this CPU, whichever it is: on a CPU whose U8S8 saturates, s8 weights gave 0.188 vs 0.065."""
    model = _conv_relu_qdq_conv()
    low = lower_for_ort_cpu(model)
    assert low.weights == ("s8" if _cpu.u8s8_is_exact() else "u8")
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


@pytest.mark.parametrize("weights", ["s8", "u8"])
def test_shift_to_uint8_128_is_exact(weights: str) -> None:
    """int8/0 -> uint8/128 with the same scale is the same quantization grid: identical outputs."""
    model = _conv_relu_qdq_conv()
    model.graph.node[3].op_type = "Sin"  # not non-negative: the pair after it is only shifted
    del model.graph.node[3].input[1:]
    low = lower_for_ort_cpu(model, weights=weights)  # type: ignore[arg-type]
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


@pytest.mark.parametrize("relu", [False, True])
def test_weight_forms_are_the_same_grid(relu: bool) -> None:
    """s8 and u8 weights dequantize to the same floats: unfused (ORT_DISABLE_ALL) outputs are identical."""
    model, x, _ = _saturating_conv(relu)
    s8, u8 = lower_for_ort_cpu(model, weights="s8"), lower_for_ort_cpu(model, weights="u8")
    assert (s8.weights, s8.u8_weights, u8.weights, u8.u8_weights) == ("s8", [], "u8", ["wq"])
    for low in (s8, u8):
        onnx.checker.check_model(low.model, full_check=True)
    w_dq = next(n for n in u8.model.graph.node if n.output[0] == "w")
    inits = _initializers(u8.model)
    np.testing.assert_array_equal(inits[w_dq.input[0]].astype(np.int16) - 128, _initializers(model)["wq"])
    assert inits[w_dq.input[2]].dtype == np.uint8 and set(inits[w_dq.input[2]].tolist()) == {128}
    assert w_dq.input[1] == "ws", "same scales"
    assert "wq" not in inits and "wz" not in inits, "unread int8 weights are removed"
    assert _initializers(s8.model)["wq"].dtype == np.int8, "s8 keeps int8 weights"
    unfused = _run(s8.model, x, "ORT_DISABLE_ALL")
    np.testing.assert_allclose(_run(u8.model, x, "ORT_DISABLE_ALL"), unfused, rtol=0, atol=1e-6)
    if not relu:  # no Relu pair (whose uint8/0 grid is finer): the canonical grid itself
        np.testing.assert_allclose(unfused, _run(model, x, "ORT_DISABLE_ALL"), rtol=0, atol=1e-6)


def test_u8_weights_fuse_and_do_not_saturate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """U8U8 (uint8 activations and weights) is exact on every CPU ORT has kernels for: fused = unfused, to one output step."""
    model, x, s_out = _saturating_conv(relu=True)
    low = lower_for_ort_cpu(model, weights="u8")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "u8.onnx")
    ort.InferenceSession(low.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "u8.onnx"))
    convs = [n for n in optimized.graph.node if n.op_type == "QLinearConv"]
    assert len(convs) == 1 and _initializers(optimized)[convs[0].input[3]].dtype == np.uint8
    diff = np.abs(_run(low.model, x) - _run(low.model, x, "ORT_DISABLE_ALL")).max()
    assert diff <= 1.01 * s_out


def test_s7_weights_fuse_into_u8s8_kernels_and_do_not_saturate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """7-bit weights (within +-63): ORT's fast U8S8 kernels, exact even where they saturate with full int8 weights."""
    model, x, s_out = _saturating_conv(relu=True)
    low = lower_for_ort_cpu(model, weights="s7")
    assert (low.weights, low.u8_weights) == ("s7", ["wq"])
    onnx.checker.check_model(low.model, full_check=True)
    w_dq = next(n for n in low.model.graph.node if n.output[0] == "w")
    inits, before = _initializers(low.model), _initializers(model)
    q7 = inits[w_dq.input[0]]
    assert q7.dtype == np.int8 and np.abs(q7.astype(np.int16)).max() <= 63
    # the same weights on a grid of half the resolution: within half a 7-bit step of the int8 ones, per channel
    w8, w7 = before["wq"] * before["ws"].reshape(-1, 1, 1, 1), q7 * inits[w_dq.input[1]].reshape(-1, 1, 1, 1)
    assert np.all(np.abs(w7 - w8) <= 0.5001 * inits[w_dq.input[1]].reshape(-1, 1, 1, 1))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "s7.onnx")
    ort.InferenceSession(low.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "s7.onnx"))
    convs = [n for n in optimized.graph.node if n.op_type == "QLinearConv"]
    assert len(convs) == 1 and _initializers(optimized)[convs[0].input[3]].dtype == np.int8, "int8 weights: the U8S8 kernel"
    assert np.abs(_run(low.model, x) - _run(low.model, x, "ORT_DISABLE_ALL")).max() <= 1.01 * s_out, "fused = unfused: no saturation"


def test_s7_keeps_a_channel_already_within_63_as_it_is() -> None:
    from converter.plugins.ort._weights import _to_s7

    w = np.array([[10, -63, 5], [127, -100, 1]], np.int8)
    q, scale = _to_s7(w, np.array([0.1, 0.2], np.float32), axis=0)
    np.testing.assert_array_equal(q[0], w[0])
    assert scale[0] == np.float32(0.1) and np.isclose(scale[1], 0.2 * 127 / 63)
    np.testing.assert_array_equal(q[1], np.rint(w[1].astype(np.float32) * 63 / 127).astype(np.int8))


def test_detection_never_calls_a_saturating_cpu_exact() -> None:
    """Where ORT's fused U8S8 conv saturates on this machine, ``u8s8_is_exact()`` says so (no saturation: nothing to check)."""
    model, x, s_out = _saturating_conv(relu=True)
    low = lower_for_ort_cpu(model, weights="s8")
    steps = np.abs(_run(low.model, x) - _run(low.model, x, "ORT_DISABLE_ALL")).max() / s_out
    if steps > 2:  # saturated (20 steps off on AVX2 without VNNI); rounding alone moves one step at most
        assert not _cpu.u8s8_is_exact()


@pytest.mark.parametrize("exact", [False, True])
def test_auto_follows_cpu_detection(monkeypatch: pytest.MonkeyPatch, exact: bool) -> None:
    monkeypatch.setattr(_lowering, "u8s8_is_exact", lambda: exact)
    low = lower_for_ort_cpu(_saturating_conv(relu=True)[0])
    assert low.weights == ("s8" if exact else "u8")
    assert low.u8_weights == ([] if exact else ["wq"])
    float_weights = lower_for_ort_cpu(_conv_relu_qdq_conv())
    assert float_weights.u8_weights == ([] if exact else ["w1"]), "a float weight ORT would quantize to int8 is quantized as uint8/128"


def test_unknown_weight_form_is_refused() -> None:
    with pytest.raises(ValueError, match="weights"):
        lower_for_ort_cpu(_conv_relu_qdq_conv(), weights="s4")  # type: ignore[arg-type]


@pytest.mark.parametrize(("machine", "flags", "exact"), [
    ("x86_64", {"sse4_1", "avx2", "fma"}, False),  # AVX2 only: VPMADDUBSW saturates
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, False),  # AVX512 without VNNI: saturates too
    ("x86_64", {"avx2", "avx512f", "avx512bw", "avx512_vnni"}, True),
    ("x86_64", {"avx2", "avx_vnni"}, True),
    ("x86_64", {"avx2", "avx_vnni", "avx512bw"}, False),  # MLAS replaces the AVX-VNNI kernel by the AVX512BW one
    ("AMD64", {"avx2", "avx512bw", "avx512_vnni"}, True),
    ("aarch64", set(), True),
    ("arm64", None, True),
    ("riscv64", {"v"}, False),  # unknown: conservative
])
def test_u8s8_is_exact(machine: str, flags: set[str] | None, exact: bool) -> None:
    assert _cpu.u8s8_is_exact(machine, flags) is exact


def test_x86_with_unreadable_cpu_features_is_conservative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cpu, "cpu_flags", lambda cpuinfo=None: None)
    assert _cpu.u8s8_is_exact("x86_64") is False


def test_cpu_flags_reads_proc_cpuinfo_text() -> None:
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert _cpu.cpu_flags(x86) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert _cpu.cpu_flags("processor\t: 0\nFeatures\t: fp asimd asimddp\n") == {"fp", "asimd", "asimddp"}
    assert _cpu.cpu_flags("processor\t: 0\n") is None


@pytest.mark.parametrize("form", ["u8", "s7"])
@pytest.mark.parametrize(("op", "float_weight"), [("MatMul", False), ("Gemm", False), ("Gemm", True)])
def test_u8_weights_of_matmul_and_gemm(op: str, float_weight: bool, form: str) -> None:
    """MatMul (QLinearMatMul) and Gemm (QGemm) weights too; a float Gemm weight (transB=1) is quantized per output row."""
    rng = np.random.default_rng(4)
    k, n = 64, 32
    wq = (rng.integers(64, 128, (n, k)) * rng.choice([-1, 1], (n, 1))).astype(np.int8)  # N x K: Gemm transB=1
    ws = np.full(n, 1e-3, np.float32)
    s_out = k * 4.0 * 1e-3  # |y| <= k * amax * 127*ws: amax_out / 127
    inits = [numpy_helper.from_array(np.array(4 / 127, np.float32), "sa"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(s_out, np.float32), "so")]
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("QuantizeLinear", ["a", "sa", "z"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "sa", "z"], ["ad"])]
    if float_weight:
        inits.append(numpy_helper.from_array(wq.astype(np.float32) * ws[:, None], "w"))
    else:
        w = wq if op == "Gemm" else np.ascontiguousarray(wq.T)
        inits += [numpy_helper.from_array(w, "wq"), numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(np.zeros(n, np.int8), "wz")]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0 if op == "Gemm" else 1))
    nodes += [helper.make_node(op, ["ad", "w"], ["c"], **({"transB": 1} if op == "Gemm" else {})),
              helper.make_node("QuantizeLinear", ["c", "so", "z"], ["cq"]), helper.make_node("DequantizeLinear", ["cq", "so", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, n])], inits)
    low = lower_for_ort_cpu(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights=form)  # type: ignore[arg-type]
    assert low.u8_weights == ["w" if float_weight else "wq"]
    onnx.checker.check_model(low.model, full_check=True)
    x = rng.uniform(3, 4, (4, k)).astype(np.float32)
    assert np.abs(_run(low.model, x) - _run(low.model, x, "ORT_DISABLE_ALL")).max() <= 1.01 * s_out


def test_one_element_qdq_parameters_lower_like_scalars() -> None:
    """Exporters often write per-tensor scale and zero point as shape [1] (the conformance kit found the crash)."""
    model = _conv_relu_qdq_conv()
    for t in model.graph.initializer:
        if t.name in ("s", "z", "sx", "lo"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(1), t.name))
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    lowered, scalar = lower_for_ort_cpu(model), lower_for_ort_cpu(_conv_relu_qdq_conv())
    assert lowered.lowered == scalar.lowered == ["r1"] and lowered.shifted == scalar.shifted == ["x"]
    np.testing.assert_array_equal(_run(lowered.model, x), _run(scalar.model, x))  # the same lowering as 0-d parameters
