"""-b ort on a Q/DQ model quantized elsewhere (QAT, another tool's PTQ: pairs on the layers' inputs, no recorded ranges):
the ranges of the Conv outputs before SiLU/HardSwish and of the activations after them are derived from the pairs the
model has (``plugins/ort/_derived.py``), so those Convs fuse as with calibrated ranges."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from converter.plugins.ort import lower_for_ort_cpu
from converter.plugins.ort._derived import _silu, _solve, derived_ranges
from tests.test_ort_lowering_acts import MODELS, _canonical, _optimized_ops, _run, _samples, cosine, plugins  # noqa: F401  (plugins: a fixture)


def _arrived(canonical: onnx.ModelProto) -> onnx.ModelProto:
    """The canonical graph as another tool would hand it over: the same pairs, no recorded ranges."""
    m = onnx.ModelProto()
    m.CopyFrom(canonical)
    del m.metadata_props[:]
    return m


@pytest.mark.parametrize("name", ["conv_silu", "conv_hardswish", "conv_concat", "conv_maxpool", "pad_conv"])
def test_convs_before_silu_and_hardswish_fuse_without_recorded_ranges(name: str, tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    model, canonical = _canonical(name, tmp_path, plugins)
    arrived = _arrived(canonical)
    outputs = {o.name for o in model.graph.output}
    convs = sum(n.op_type == "Conv" and n.output[0] not in outputs for n in model.graph.node)
    before = _optimized_ops(lower_for_ort_cpu(arrived, extend=False).model, tmp_path)
    low = lower_for_ort_cpu(arrived)
    assert low.ranges == 0 and low.ranges_derived > 0, low
    onnx.checker.check_model(low.model, full_check=True)
    after = _optimized_ops(low.model, tmp_path)
    assert before["QLinearConv"] < convs <= after["QLinearConv"], f"{name}: before {dict(before)}, after {dict(after)}"
    x = _samples(model, 8, 1)
    ref = _run(model, x)
    assert cosine(_run(low.model, x), ref) >= 0.99
    assert cosine(_run(low.model, x), ref) >= cosine(_run(lower_for_ort_cpu(arrived, extend=False).model, x), ref) - 0.005


def test_derived_bounds_lose_nothing_the_pair_after_keeps(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The Conv output's top is where the activation reaches the top of the pair after it; HardSwish's bottom is -3
    (below it HardSwish is 0); SiLU's is where it is within half a step of that pair of 0."""
    for name in ("conv_hardswish", "conv_silu"):
        _, canonical = _canonical(name, tmp_path, plugins)
        ranges = derived_ranges(canonical)
        g = canonical.graph
        producer = {o: n for n in g.node for o in n.output}
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
        checked = 0
        for n in g.node:
            if n.op_type != "Conv" or n.output[0] not in ranges:
                continue
            r = ranges[n.output[0]]
            act = next(m for m in g.node if n.output[0] in m.input and m.op_type in ("HardSwish", "Sigmoid"))
            y = act.output[0] if act.op_type == "HardSwish" else next(m for m in g.node if m.op_type == "Mul" and n.output[0] in m.input).output[0]
            q = next(m for m in g.node if m.op_type == "QuantizeLinear" and m.input[0] == y)
            step = float(inits[q.input[1]])
            top = 127 * step
            if act.op_type == "HardSwish":
                assert r.min == -3.0 and r.max == pytest.approx(top if top >= 3 else (-3 + math.sqrt(9 + 24 * top)) / 2, rel=1e-6)
            else:
                assert _silu(r.max) == pytest.approx(top, rel=1e-6) and r.max > top
                assert _silu(r.min) == pytest.approx(-step / 2, rel=1e-4) and r.min < -1.2785
            checked += 1
            assert producer[n.input[0]].op_type == "DequantizeLinear"
        assert checked >= 1, name


def test_solve_finds_the_crossing() -> None:
    assert _solve(lambda v: v * v, 4.0, 0.0, 10.0) == pytest.approx(2.0)
    x = _solve(_silu, -0.1, -64.0, -1.2784645)
    assert _silu(x) == pytest.approx(-0.1, abs=1e-9) and x < -1.2784645


def test_a_quantizer_without_zero_point_bounds_as_uint8() -> None:
    """QuantizeLinear(x, scale) with no zero point writes uint8 with zero point 0: the top is 255 steps."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), "w")
    inits = [w, numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "s"], ["wd"]), helper.make_node("Conv", ["xd", "wd"], ["c"]),
             helper.make_node("HardSwish", ["c"], ["h"]), helper.make_node("QuantizeLinear", ["h", "s"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    r = derived_ranges(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))["c"]
    assert r.min == -3.0 and r.max == pytest.approx(25.5)
