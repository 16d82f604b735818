"""-b ort writes HardSwish back where ONNX Runtime's saved model inlined it (HardSigmoid + Mul): each quantized
HardSwish then dequantizes its input once at run time, not once per reader (``plugins/ort/_hardswish.py``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from converter.convert_job import ConvertRequest, convert
from converter.plugins.ort._hardswish import collapse_written_out, join_hardswish, join_hardswish_in_file
from tests.test_ort_lowering_acts import C, Net, _samples, cosine, plugins  # noqa: F401  (plugins: a fixture)


def _swish_graph(alpha: float = 1 / 6, extra_reader: bool = False) -> onnx.GraphProto:
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], name="hs", alpha=alpha, beta=0.5), helper.make_node("Mul", ["x", "h"], ["y"], name="mul")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["h"], ["z"], name="neg"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])], outputs)


def test_join_only_the_exact_pattern() -> None:
    g = _swish_graph()
    assert join_hardswish(g, {"hs", "mul"}) == 1
    assert [(n.op_type, list(n.input), list(n.output)) for n in g.node] == [("HardSwish", ["x"], ["y"])]
    assert join_hardswish(_swish_graph(alpha=0.2), set()) == 0  # ONNX's default HardSigmoid is not HardSwish's
    assert join_hardswish(_swish_graph(extra_reader=True), set()) == 0  # the HardSigmoid is read elsewhere too


def test_join_keeps_values_and_old_opsets_alone(tmp_path: Path) -> None:
    x = np.linspace(-5, 5, 4, dtype=np.float32)
    for opset, joined in ((17, 1), (13, 0)):  # HardSwish is an opset-14 op
        path = tmp_path / f"m{opset}.onnx"
        onnx.save(helper.make_model(_swish_graph(), opset_imports=[helper.make_opsetid("", opset)]), str(path))
        before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert join_hardswish_in_file(path) == joined
        after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)


def _runtime_ops(path: Path, tmp: Path) -> tuple[Counter[str], list[str]]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp / "runtime.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = onnx.load(str(tmp / "runtime.onnx")).graph
    return Counter(n.op_type for n in g.node), [n.input[0] for n in g.node if n.op_type == "DequantizeLinear"]


def _conv_hardswish_out() -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> HardSwish -> graph output: the HardSwish reads a uint8 pair but writes a float output
    (no gate pair, ``_gates``), so ORT inlines it when it saves the artifact."""
    n = Net(9, [1, 8, 16, 16])
    return n.model(n.op("HardSwish", [n.conv(n.op("Relu", [n.conv("x", 8, C)]), C, C)]))


def test_quantized_hardswish_dequantizes_once(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    model = _conv_hardswish_out()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", x=_samples(model, 16, 0))
    out = convert(ConvertRequest(model=tmp_path / "m.onnx", pipeline="qdq", backend="ort", output=tmp_path / "m.ort.onnx",
                                 pass_inputs={"calib_data": str(tmp_path / "calib.npz")}), plugins)
    assert out.artifact.manifest["hardswish_joined"] == 1
    written = Counter(n.op_type for n in onnx.load(str(tmp_path / "m.ort.onnx")).graph.node)
    assert written["HardSwish"] == 1 and written["HardSigmoid"] == 0, dict(written)
    ops, dq_inputs = _runtime_ops(tmp_path / "m.ort.onnx", tmp_path)
    assert len(dq_inputs) == len(set(dq_inputs)), f"a tensor dequantized twice at run time: {dict(ops)}"
    assert ops["QLinearConv"] == 2, dict(ops)
    x = _samples(model, 8, 1)
    ref = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "m.ort.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert cosine(got, ref) >= 0.99


def _written_out(opset: int, variant: str = "paddle", extra_reader: bool = False) -> onnx.ModelProto:
    consts = {"three": 3.0, "zero": 0.0, "six": 6.0, "five": 5.0}
    if variant == "paddle":  # Mul(x, Clip(x + 3, 0, 6)) / 6
        nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                 helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    elif variant == "torch":  # x * (Clip(3 + x, 0, 6) / 6)
        nodes = [helper.make_node("Add", ["three", "x"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                 helper.make_node("Div", ["c", "six"], ["d"]), helper.make_node("Mul", ["d", "x"], ["y"])]
    else:  # not a HardSwish: Clip's max 5 with a division by 6
        nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "five"], ["c"]),
                 helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [None]))
    inits = [onnx.numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _values(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


@pytest.mark.parametrize(("opset", "variant", "ops"), [(13, "paddle", ["HardSigmoid", "Mul"]), (17, "paddle", ["HardSwish"]),
                                                       (13, "torch", ["HardSigmoid", "Mul"]), (17, "torch", ["HardSwish"])])
def test_written_out_hardswish_collapses(opset: int, variant: str, ops: list[str]) -> None:
    model = _written_out(opset, variant)
    x = np.linspace(-8, 8, 100_001, dtype=np.float32)
    before = _values(model, x)
    assert collapse_written_out(model.graph, opset) == 1
    assert [n.op_type for n in model.graph.node] == ops
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(_values(model, x), before, rtol=1e-6, atol=1e-6)


def test_what_is_not_a_hardswish_stays() -> None:
    for model in (_written_out(13, "other"), _written_out(13, "paddle", extra_reader=True)):
        ops = [n.op_type for n in model.graph.node]
        assert collapse_written_out(model.graph, 13) == 0 and [n.op_type for n in model.graph.node] == ops


def test_hardswish_between_pairs_runs_as_qlinearmul(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A HardSwish from a uint8 pair into a Q runs as QLinearAdd (its gate, requantized) and QLinearMul: no float op
    is left between the two QLinearConvs (``_gates``)."""
    from converter.plugins.ort import lower_for_ort_cpu
    from tests.test_ort_lowering_acts import _canonical, _run

    model, canonical = _canonical("conv_hardswish", tmp_path, plugins)
    low = lower_for_ort_cpu(canonical)
    assert low.gates_quantized == 2, low
    ops, _ = _runtime_ops_of(low.model, tmp_path)
    assert ops["QLinearMul"] == 2 and ops["QLinearAdd"] == 2 and ops["QLinearConv"] == 2, dict(ops)  # the last Conv writes the float output
    assert not {"Mul", "HardSigmoid", "HardSwish", "Add"} & set(ops), dict(ops)
    onnx.checker.check_model(low.model, full_check=True)
    x = _samples(model, 8, 1)
    ref = _run(model, x)
    assert cosine(_run(low.model, x), ref) >= 0.99
    assert cosine(_run(low.model, x), _run(canonical, x, unfused=True)) >= 0.999  # the gate's 1/255 steps add next to nothing


def _runtime_ops_of(model: onnx.ModelProto, tmp: Path) -> tuple[Counter[str], list[str]]:
    path = tmp / "lowered.onnx"
    onnx.save(model, str(path))
    return _runtime_ops(path, tmp)


def _gated_uint8_model(op: str, alpha: float, beta: float) -> onnx.ModelProto:
    """uint8 x -> DQ -> HardSwish (or x * HardSigmoid(x; alpha, beta)) -> Q -> uint8 y, over every uint8 value."""
    from onnx import numpy_helper
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"), numpy_helper.from_array(np.array(100, np.uint8), "xz"),
             numpy_helper.from_array(np.array(0.03, np.float32), "ys"), numpy_helper.from_array(np.array(20, np.uint8), "yz")]
    body = ([helper.make_node("HardSwish", ["xd"], ["h"])] if op == "HardSwish" else
            [helper.make_node("HardSigmoid", ["xd"], ["g"], alpha=alpha, beta=beta), helper.make_node("Mul", ["xd", "g"], ["h"])])
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]), *body, helper.make_node("QuantizeLinear", ["h", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [256])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [256])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("op", "alpha", "beta", "float_ops"), [("HardSwish", 1 / 6, 0.5, 0), ("Mul", 0.2, 0.5, 0), ("Mul", 0.25, 0.0, 1)])
def test_gate_is_hardsigmoid_on_the_uint8_grid(op: str, alpha: float, beta: float, float_ops: int) -> None:
    """The gate built by requantization (x + b/a, scale 1/(255 a), read back as 1/255) is HardSigmoid rounded to 1/255 steps,
    computed as written and as ORT fuses it; with b <= 0 a float HardSigmoid stays, with a uint8 pair."""
    from converter.plugins.ort._gates import quantize_gates

    model = _gated_uint8_model(op, alpha, beta)
    assert quantize_gates(model.graph) == 1
    onnx.checker.check_model(model, full_check=True)
    assert sum(n.op_type == "HardSigmoid" for n in model.graph.node) == float_ops
    xq = np.arange(256, dtype=np.uint8)
    x = (xq.astype(np.float64) - 100) * np.float32(0.05)
    gate = np.round(np.clip(alpha * x + beta, 0, 1) * 255) / 255
    want = np.clip(np.round(x * gate / np.float32(0.03)) + 20, 0, 255)
    for unfused in (True, False):
        so = ort.SessionOptions()
        if unfused:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        got = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(["y"], {"xq": xq})[0]
        assert np.abs(got.astype(int) - want).max() <= 1, (unfused, np.flatnonzero(got != want))


def _affine_model(a: float, b: float) -> onnx.ModelProto:
    """uint8 x -> DQ -> HardSwish -> Mul(a) -> Add(b) -> Q/DQ on y's grid -> float y (PP-LCNetV3's learnable affine block)."""
    from onnx import numpy_helper
    s_y = 0.02
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"), numpy_helper.from_array(np.array(100, np.uint8), "xz"),
             numpy_helper.from_array(np.array([a], np.float32), "a"), numpy_helper.from_array(np.array(b, np.float32), "b"),
             numpy_helper.from_array(np.array(s_y, np.float32), "ys"), numpy_helper.from_array(np.array(40, np.uint8), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]), helper.make_node("HardSwish", ["xd"], ["h"]),
             helper.make_node("Mul", ["h", "a"], ["ha"]), helper.make_node("Add", ["ha", "b"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]), helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["yd"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [256])],
                              [helper.make_tensor_value_info("yd", TensorProto.FLOAT, [256])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("a", "b", "adds", "error"), [
    (0.7, 0.2, 1, 0.01),                   # B = 10 steps of y's grid: into the zero point, the grid as it was
    (0.7, 0.2 + 0.02 * 0.4, 1, 0.0104),    # B = 10.4 steps: the grid moves to B / 10 (4% coarser)
    (0.7, 0.02 * 1.4, 2, 0.02),            # B = 1.4 steps: too few to move the grid for; a pair of its own and a QLinearAdd
    (-0.7, 0.2, 0, 0.01),                  # A < 0: no uint8 scale can carry it, the affine stays float
])
def test_affine_after_hardswish_goes_into_the_qlinearmul(a: float, b: float, adds: int, error: float, tmp_path: Path) -> None:
    """``A HardSwish(x) + B`` from a uint8 x into a Q: A into the Mul's reading of x, B into the output's zero point (the grid
    moved to whole steps of B where it must be) or, for a small B, a QLinearAdd; what is computed is A HardSwish(x) + B
    within ``error`` (its roundings) and the gate's 1/255; ORT runs it as uint8 ops only."""
    from converter.plugins.ort._gates import quantize_gates

    model = _affine_model(a, b)
    assert quantize_gates(model.graph) == int(adds > 0)
    onnx.checker.check_model(model, full_check=True)
    xq = np.arange(256, dtype=np.uint8)
    x = (xq.astype(np.float64) - 100) * np.float32(0.05)
    want = a * x * np.clip(x / 6 + 0.5, 0, 1) + b
    bound = error + abs(a) * np.abs(x) * np.where(np.abs(x) < 3, 0.5 / 255, 0) + 1e-5
    top = (255 - 40) * 0.02  # y's grid covered [-0.8, 4.3] before: compare where both grids hold the value
    inside = (want > -0.8) & (want < top - 2 * error)
    for unfused in (True, False):
        so = ort.SessionOptions()
        if unfused:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        got = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(["yd"], {"xq": xq})[0]
        assert (np.abs(got - want) <= bound + 1e-6)[inside].all(), (unfused, np.abs(got - want)[inside].max())
    if adds:
        path = tmp_path / "m.onnx"
        onnx.save(model, str(path))
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
        assert ops["QLinearMul"] == 1 and ops["QLinearAdd"] == adds and not {"Mul", "Add", "HardSwish", "HardSigmoid"} & set(ops), dict(ops)
