"""-b ort on CPU: an Add read only by a LayerNormalization is written as Sum, so ORT does not fuse the pair into its
SkipLayerNormalization, which its CPU provider runs several times slower (``plugins/ort/_layernorm.py``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.plugins.ort._layernorm import sums_before_layernorm
from tests.test_ort_lowering_acts import plugins  # noqa: F401  (a fixture)

H = 16


def _block(extra_reader: bool = False, written_out: bool = False) -> onnx.ModelProto:
    """x, r [B, S, H] -> Add -> LayerNormalization -> y (a transformer's residual and norm); ``written_out``: the norm as
    ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add (opset < 17 exports, Paddle)."""
    inits = [numpy_helper.from_array(np.linspace(0.5, 1.5, H, dtype=np.float32), "g"), numpy_helper.from_array(np.linspace(-1, 1, H, dtype=np.float32), "b"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"), numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
    norm = [helper.make_node("LayerNormalization", ["a", "g", "b"], ["y"], axis=-1, epsilon=1e-5)] if not written_out else [
        helper.make_node("ReduceMean", ["a"], ["m"], axes=[-1]), helper.make_node("Sub", ["a", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["p"]), helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]), helper.make_node("Div", ["d", "sd"], ["n"]),
        helper.make_node("Mul", ["n", "g"], ["ng"]), helper.make_node("Add", ["ng", "b"], ["y"])]
    nodes = [helper.make_node("Add", ["x", "r"], ["a"]), *norm]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", H])]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, ["B", "S", H]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "S", H]) for n in ("x", "r")]
    return helper.make_model(helper.make_graph(nodes, "block", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)])


def _runtime(model: onnx.ModelProto, tmp: Path, feeds: dict[str, np.ndarray]) -> tuple[Counter[str], np.ndarray]:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp / "rt.onnx")
    y = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]
    return Counter(n.op_type for n in onnx.load(str(tmp / "rt.onnx")).graph.node), y


@pytest.mark.parametrize("written_out", [False, True])
def test_add_before_layernorm_becomes_sum_and_is_not_fused(written_out: bool, tmp_path: Path) -> None:
    model = _block(written_out=written_out)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((2, 3, H)).astype(np.float32) for k in ("x", "r")}
    before, expected = _runtime(model, tmp_path, feeds)
    assert before["SkipLayerNormalization"] == 1, dict(before)  # what ORT does with the Add
    out, n = sums_before_layernorm(model)
    assert n == 1 and model.graph.node[0].op_type == "Add"  # the input model is not changed
    onnx.checker.check_model(out, full_check=True)
    after, y = _runtime(out, tmp_path, feeds)
    assert after["SkipLayerNormalization"] == 0 and after["LayerNormalization"] == 1, dict(after)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_an_add_read_elsewhere_stays() -> None:
    model = _block(extra_reader=True)
    out, n = sums_before_layernorm(model)
    assert n == 0 and out is model


def test_the_backend_writes_it_for_cpu(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from converter.convert_job import ConvertRequest, convert

    onnx.save(_block(), str(tmp_path / "block.onnx"))
    out = convert(ConvertRequest(model=tmp_path / "block.onnx", backend="ort", output=tmp_path / "out.onnx"), plugins)
    assert out.artifact is not None and out.artifact.manifest["adds_before_layernorm_as_sum"] == 1
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "out.onnx")).graph.node)
    assert ops["Sum"] == 1 and ops["SkipLayerNormalization"] == 0 and ops["Add"] == 0, dict(ops)
    rng = np.random.default_rng(1)
    feeds = {k: rng.standard_normal((2, 3, H)).astype(np.float32) for k in ("x", "r")}
    ref = ort.InferenceSession(str(tmp_path / "block.onnx"), providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]
    got = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
