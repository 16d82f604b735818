"""Pairs after ops with a known floor (HardSwish, SiLU, x*HardSigmoid(x), HardSwish written out:
``converter.activation_floors``) span [floor, amax] in the ORT lowering: finer steps than the symmetric [-amax, amax], and nothing clipped that it would keep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.activation_floors import SILU_FLOOR, GraphView, floor_of, uint8_over
from converter.plugins.ort import lower_for_ort_cpu
from tests.test_ort_lowering_acts import _canonical, _run, _samples, cosine, plugins  # noqa: F401  (plugins: a fixture)


def _graph(nodes: list[onnx.NodeProto], inits: dict[str, float]) -> onnx.GraphProto:
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
                             [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in inits.items()])


CASES = {
    "hardswish": (_graph([helper.make_node("HardSwish", ["x"], ["y"])], {}), -0.375),
    "silu": (_graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])], {}), SILU_FLOOR),
    "x_hardsigmoid": (_graph([helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5), helper.make_node("Mul", ["x", "h"], ["y"])], {}), -0.375),
    "written_out": (_graph([helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                            helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])],
                           {"three": 3.0, "zero": 0.0, "six": 6.0}), -0.375),
    "written_out_scaled_gate": (_graph([helper.make_node("Add", ["three", "x"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                                        helper.make_node("Div", ["c", "six"], ["d"]), helper.make_node("Mul", ["d", "x"], ["y"])],
                                       {"three": 3.0, "zero": 0.0, "six": 6.0}), -0.375),
    "sigmoid_scaled": (_graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "two"], ["y"])], {"two": 2.0}), 0.0),
    "learnable_affine": (_graph([helper.make_node("HardSwish", ["x"], ["h"]), helper.make_node("Mul", ["h", "a"], ["m"]),
                                 helper.make_node("Add", ["b", "m"], ["y"])], {"a": 0.5, "b": -0.25}), -0.375 * 0.5 - 0.25),
    "shifted_down": (_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sub", ["r", "c"], ["y"])], {"c": 1.5}), -1.5),
    "subtracted_from": (_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sub", ["c", "r"], ["y"])], {"c": 1.5}), None),
    "unknown": (_graph([helper.make_node("Tanh", ["x"], ["y"])], {}), None),
    "negative_scaling": (_graph([helper.make_node("HardSwish", ["x"], ["h"]), helper.make_node("Mul", ["h", "m"], ["y"])], {"m": -1.0}), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_floor_is_the_function_s_least_value(name: str) -> None:
    graph, expected = CASES[name]
    floor = floor_of("y", GraphView.of(graph))
    if expected is None:
        assert floor is None
        return
    assert floor == pytest.approx(expected, abs=1e-6)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.linspace(-20, 20, 400_001, dtype=np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.min() >= floor - 1e-6 and y.min() == pytest.approx(floor, abs=1e-4)  # a bound, and the least one


def test_uint8_over_spans_floor_to_amax() -> None:
    scale, zero = uint8_over(-0.375, 6.0)
    assert scale == pytest.approx(6.375 / 255) and -zero * scale == pytest.approx(-0.375, abs=scale / 2)
    assert (255 - zero) * scale == pytest.approx(6.0, abs=scale / 2)
    assert uint8_over(-7.0, 6.0) is None, "a floor below -amax: the symmetric grid is already finer"


def test_hardswish_pairs_are_floored_and_no_worse(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    model, canonical = _canonical("conv_hardswish", tmp_path, plugins)
    low = lower_for_ort_cpu(canonical)
    hardswish_outputs = {n.output[0] for n in model.graph.node if n.op_type == "HardSwish"}
    assert set(low.floored) == hardswish_outputs, (low.floored, low.shifted)
    inits = {t.name: numpy_helper.to_array(t) for t in low.model.graph.initializer}
    canon_inits = {t.name: numpy_helper.to_array(t) for t in canonical.graph.initializer}
    canon_q = {n.input[0]: n for n in canonical.graph.node if n.op_type == "QuantizeLinear"}
    for q in (n for n in low.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in hardswish_outputs):
        scale, zero = float(inits[q.input[1]]), int(inits[q.input[2]])
        amax = float(canon_inits[canon_q[q.input[0]].input[1]]) * 127
        assert -zero * scale == pytest.approx(-0.375, abs=scale / 2) and (255 - zero) * scale == pytest.approx(amax, abs=scale)
        assert scale < amax / 127 * 0.6, "finer than the symmetric grid's step"
    x = _samples(model, 8, 1)
    ref = _run(model, x)
    assert 1 - cosine(_run(low.model, x), ref) <= 1 - cosine(_run(canonical, x, unfused=True), ref) + 1e-6
