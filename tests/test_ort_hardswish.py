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
    """A HardSwish from a uint8 pair into a Q gets a uint8 gate: ORT fuses its Mul into QLinearMul (``_gates``)."""
    from converter.plugins.ort import lower_for_ort_cpu
    from tests.test_ort_lowering_acts import _canonical, _run

    model, canonical = _canonical("conv_hardswish", tmp_path, plugins)
    low = lower_for_ort_cpu(canonical)
    assert low.gates_quantized == 2, low
    ops, _ = _runtime_ops_of(low.model, tmp_path)
    assert ops["QLinearMul"] == 2 and ops["Mul"] == 0 and ops["QLinearConv"] == 2, dict(ops)  # the last Conv writes the float output
    x = _samples(model, 8, 1)
    ref = _run(model, x)
    assert cosine(_run(low.model, x), ref) >= 0.99
    assert cosine(_run(low.model, x), _run(canonical, x, unfused=True)) >= 0.999  # the gate's 1/255 steps add next to nothing


def _runtime_ops_of(model: onnx.ModelProto, tmp: Path) -> tuple[Counter[str], list[str]]:
    path = tmp / "lowered.onnx"
    onnx.save(model, str(path))
    return _runtime_ops(path, tmp)
