"""batch_verify: batch N of a dynamic model against N stacked batch-1 runs of the original.

Models are tiny ONNX text; inputs are seeded (seed + sample index).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import pytest

from converter.backend_api import TensorSpec
from converter.batch_verify import BATCH_TOLERANCE, BatchCheck, batch_axis, check_batch_stacking
from converter.feeds import seeded_feeds
from converter.graph_info import graph_inputs


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


FLATTEN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[{b},2,3] x) => (float[{b},4] y) {{
    s = Constant <value = int64[2] {{{s0}, 6}}> ()
    f = Reshape(x, s)
    w = Constant <value = float[6,4] {{1, -2, 3, 0.5, 0.25, 1, 2, -1, 0, 1, 1, 1, 3, 2, 1, 0, -1, -2, 0.5, 0.5, 2, 1, 0, 1}}> ()
    y = MatMul(f, w)
}}"""


def flatten(batch: str, s0: int) -> onnx.ModelProto:
    return parse(FLATTEN.format(b=batch, s0=s0))


def test_a_correct_dynamic_model_passes_at_every_batch() -> None:
    check = check_batch_stacking(flatten("1", 1), flatten("N", 0), (1, 2, 7))
    assert check and check.passed
    assert [r.batch for r in check.runs] == [1, 2, 7]
    assert all(r.comparison is not None and r.comparison.outputs[0].shape == (r.batch, 4) for r in check.runs)
    assert check.input_axes == {"x": 0} and check.output_axes == {"y": 0}
    assert check.tolerance == BATCH_TOLERANCE and BATCH_TOLERANCE.atol == 1e-5 and BATCH_TOLERANCE.rtol == 0.0


def test_the_naive_model_fails_and_says_why() -> None:
    check = check_batch_stacking(flatten("1", 1), flatten("N", 1), (1, 2))
    assert not check
    assert check.runs[0].passed and not check.runs[1].passed
    assert check.runs[1].error is not None and "batch 2" in check.runs[1].error
    assert "FAIL" in check.table() and "FAILED" in check.table().splitlines()[-1]
    assert check.failures() and check.failures()[0].startswith("batch 2:")


def test_mixing_samples_is_caught_numerically() -> None:
    text = """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[{b},4] x) => (float[{b},4] y) {{
            ax = Constant <value = int64[1] {{0}}> ()
            m = ReduceMean <keepdims = 1> (x, ax)
            y = Sub(x, m)
        }}"""
    check = check_batch_stacking(parse(text.format(b="1")), parse(text.format(b="N")), (1, 3))
    assert check.runs[0].passed and not check.runs[1].passed
    out = check.runs[1].comparison.outputs[0]
    assert out.max_abs > 1e-3 and "beyond tolerance" in out.problems[0]


def test_outputs_stack_along_their_symbolic_dim_and_unbatched_inputs_are_shared() -> None:
    text = """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[{b},3] x, float[3] w) => (float[2,{b},3] y, float[3] c) {{
            p = Mul(x, w)
            ax = Constant <value = int64[1] {{0}}> ()
            u = Unsqueeze(p, ax)
            y = Concat <axis=0> (u, u)
            c = Identity(w)
        }}"""
    original, dynamic = parse(text.format(b="1")), parse(text.format(b="B"))
    check = check_batch_stacking(original, dynamic, (2, 5))
    assert check, check.table()
    assert check.input_axes == {"x": 0, "w": None}
    assert check.output_axes == {"y": 1, "c": None}
    assert check.runs[1].comparison.outputs[0].shape == (2, 5, 3)


def test_samples_are_seeded_and_differ() -> None:
    specs = graph_inputs(flatten("1", 1))
    a, b = seeded_feeds(specs, 0), seeded_feeds(specs, 1)
    assert not np.array_equal(a["x"], b["x"])
    first = check_batch_stacking(flatten("1", 1), flatten("N", 0), (3,), seed=4).to_json()
    again = check_batch_stacking(flatten("1", 1), flatten("N", 0), (3,), seed=4).to_json()
    assert first == again


def test_original_with_batch_2() -> None:
    check = check_batch_stacking(flatten("2", 2), flatten("N", 0), (2, 3, 8))
    assert check.runs[0].passed and check.runs[2].passed
    assert not check.runs[1].passed and "not a multiple" in (check.runs[1].error or "")


def test_json_and_table() -> None:
    check = check_batch_stacking(flatten("1", 1), flatten("N", 0), (1, 2))
    data = check.to_json()
    json.dumps(data)
    assert data["passed"] is True and [b["batch"] for b in data["batches"]] == [1, 2]
    assert data["batches"][1]["outputs"][0]["name"] == "y"
    table = check.table()
    assert table.splitlines()[0].split()[:3] == ["batch", "output", "axis"]
    assert "atol=1e-05" in table and table.splitlines()[-1].endswith("passed")
    assert isinstance(check, BatchCheck) and bool(BatchCheck([], BATCH_TOLERANCE)) is False


@pytest.mark.parametrize(("shape", "axis"), [((1, 3), None), (("N", 3), 0), ((2, None), 1), ((), None)])
def test_batch_axis(shape, axis) -> None:
    assert batch_axis(TensorSpec("t", "float32", shape)) == axis


STATE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[{b},3] x, float[2,{b},3] state, float s) => (float[{b},3] y, float[{L},{b},3] stateN, float c) {{
    y = Mul(x, s)
    ax = Constant <value = int64[1] {{0}}> ()
    u = Unsqueeze(x, ax)
    stateN = Add(state, u)
    c = Mul(s, s)
}}"""


def test_state_inputs_and_outputs_stack_along_their_own_dim_and_scalars_are_shared() -> None:
    """A recurrent state [layers, batch, hidden] stacks along dim 1 (even when an output names its layers dim
    symbolically first); a scalar input gets one value, a scalar output must equal the batch-1 one."""
    original, dynamic = parse(STATE.format(b="1", L="2")), parse(STATE.format(b="batch", L="layers"))
    check = check_batch_stacking(original, dynamic, (1, 2, 7))
    assert check, check.table()
    assert check.input_axes == {"x": 0, "state": 1, "s": None}
    assert check.output_axes == {"y": 0, "stateN": 1, "c": None}
    assert check.runs[2].comparison.outputs[1].shape == (2, 7, 3)


def test_axes_given_override_what_the_models_say() -> None:
    original, dynamic = parse(STATE.format(b="1", L="2")), parse(STATE.format(b="batch", L="layers"))
    for out in dynamic.graph.output:  # no shapes: nothing to read the batch dim from
        out.type.tensor_type.ClearField("shape")
    assert not check_batch_stacking(original, dynamic, (2,))  # stateN would be stacked along dim 0
    check = check_batch_stacking(original, dynamic, (2, 3), axes={"stateN": 1, "c": None})
    assert check, check.table()
    assert check.output_axes == {"y": 0, "stateN": 1, "c": None}
    shared = check_batch_stacking(original, dynamic, (2,), axes={"state": None, "stateN": 1})
    assert shared and shared.input_axes["state"] is None  # one state broadcast to every sample: as good here
