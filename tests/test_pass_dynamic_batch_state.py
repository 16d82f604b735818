"""dynamic_batch on models with state and scalar inputs: each input's and output's batch dim found by analysis.

Real model: silero-vad (``input [batch, samples]``, ``state [2, batch, 128]``, ``sr`` a scalar; convs
in If branches, an LSTM), whose files are dynamic already (left alone) and made fixed-batch here.
Synthetic models (onnx.helper): a GRU with an explicit initial state ``[directions, batch, hidden]``,
a scalar used as a value and a lookup table given as an input; an LSTM whose one-layer states
``[1, 1, hidden]`` look batched at dim 0. Proof: batch 1, 2 and 7 equal stacked batch-1 runs, each
tensor stacked along its own batch dim; the ONNX checker with full_check passes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.batch_verify import check_batch_stacking
from converter.errors import UsageError
from converter.onnx_calls import check_model
from converter.ort_session import make_session, run_session
from converter.pass_api import PassContext
from converter.passes.dynamic_batch import BatchAxis, BatchDependenceError, DynamicBatchOptions, DynamicBatchPass

SILERO = "silero-vad==6.2.3"
SILERO_FIXED = {"input": [1, 512], "state": [2, 1, 128]}
BATCHES = (1, 2, 7)
CTX = PassContext(log=logging.getLogger("test.dynamic_batch.state"), seed=0)


def run_pass(model: onnx.ModelProto, **options):
    """The pass on ``model`` itself (it edits the model it is given, as in a pipeline)."""
    return DynamicBatchPass(DynamicBatchOptions(**options)).run(model, CTX)


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def axes(result) -> dict[tuple[str, str], tuple[int | None, str]]:
    assert all(isinstance(a, BatchAxis) for a in result.facts["axes"])
    return {(a.role, a.tensor): (a.axis, a.source) for a in result.facts["axes"]}


def dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def with_dims(model: onnx.ModelProto, new: dict[str, list[int]]) -> onnx.ModelProto:
    out = copy(model)
    for vi in out.graph.input:
        if vi.name in new:
            shape = vi.type.tensor_type.shape
            shape.Clear()
            for d in new[vi.name]:
                shape.dim.add().dim_value = d
    return out


def convert_and_prove(original: onnx.ModelProto, **options):
    """The pass's result: checked (full_check), then batch 1, 2, 7 == stacked batch-1 runs along the axes read from the models."""
    result = run_pass(copy(original), **options)
    assert result.modified
    check_model(result.model)
    check = check_batch_stacking(original, result.model, BATCHES)
    assert check, check.table()
    found = axes(result)
    assert check.input_axes == {t: ax for (role, t), (ax, _) in found.items() if role == "input"}
    assert check.output_axes == {t: ax for (role, t), (ax, _) in found.items() if role == "output"}
    return result


# ---- synthetic models ----------------------------------------------------------------------------


def _init(name: str, shape: tuple[int, ...], seed: int) -> onnx.TensorProto:
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32), name)


def gru_model(batch: int | str = 1) -> onnx.ModelProto:
    """ids [B,5] → rows of ``table`` (an input) → bidirectional GRU from ``h0 [2,B,6]`` → × scalar ``scale`` → view(1, 60)."""
    flat = 1 if batch == 1 else 0
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Transpose", ["emb"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("GRU", ["xt", "W", "R", "Bias", "", "h0"], ["Y", "h_n"], hidden_size=6, direction="bidirectional"),
        helper.make_node("Mul", ["Y", "scale"], ["ys"]),
        helper.make_node("Transpose", ["ys"], ["yt"], perm=[2, 0, 1, 3]),
        helper.make_node("Reshape", ["yt", "flat"], ["y"], name="view"),
    ]
    inits = [_init("W", (2, 18, 4), 1), _init("R", (2, 18, 6), 2), _init("Bias", (2, 36), 3),
             numpy_helper.from_array(np.array([flat, 60], dtype=np.int64), "flat")]
    graph = helper.make_graph(nodes, "gru_state", [
        helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, 5]),
        helper.make_tensor_value_info("table", TensorProto.FLOAT, [11, 4]),
        helper.make_tensor_value_info("h0", TensorProto.FLOAT, [2, batch, 6]),
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
    ], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 60]), helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [2, batch, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    check_model(model)
    return model


def lstm_model() -> onnx.ModelProto:
    """x [1,3,4] → one-layer LSTM from h0, c0 [1,1,5]: dim 0 of the states is 1 like the batch, but their batch is dim 1."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["xt", "W", "R", "", "", "h0", "c0"], ["Y", "h_n", "c_n"], hidden_size=5),
        helper.make_node("Squeeze", ["Y", "one"], ["ys"]),
        helper.make_node("Transpose", ["ys"], ["y"], perm=[1, 0, 2]),
    ]
    inits = [_init("W", (1, 20, 4), 4), _init("R", (1, 20, 5), 5), numpy_helper.from_array(np.array([1], dtype=np.int64), "one")]
    state = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 5]) for n in ("h0", "c0")]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5]), *(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 5]) for n in ("h_n", "c_n"))]
    graph = helper.make_graph(nodes, "lstm_state", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4]), *state], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    check_model(model)
    return model


def test_gru_state_scalar_and_table_inputs() -> None:
    original = gru_model()
    result = convert_and_prove(original)
    assert axes(result) == {
        ("input", "ids"): (0, "main"), ("input", "table"): (None, "none"), ("input", "h0"): (1, "found"), ("input", "scale"): (None, "none"),
        ("output", "y"): (0, "analysis"), ("output", "h_n"): (1, "analysis"),
    }
    inputs = {vi.name: dims(vi) for vi in result.model.graph.input}
    assert inputs == {"ids": ["batch", 5], "table": [11, 4], "h0": [2, "batch", 6], "scale": []}
    assert {o.name: dims(o) for o in result.model.graph.output} == {"y": ["batch", 60], "h_n": [2, "batch", 6]}
    assert result.facts["inputs_without_batch"] == ["table", "scale"]
    assert any(r.node == "view" and "[0, 60]" in r.change for r in result.facts["rewritten"]), result.facts["rewritten"]


def test_one_layer_lstm_states_move_from_dim_0_to_dim_1() -> None:
    result = convert_and_prove(lstm_model())
    found = axes(result)
    assert found[("input", "h0")] == found[("input", "c0")] == (1, "found")
    assert found[("output", "h_n")] == found[("output", "c_n")] == (1, "analysis")
    assert dims(result.model.graph.input[1]) == [1, "batch", 5]


def test_axes_option_overrides_the_analysis() -> None:
    result = convert_and_prove(gru_model(), axes=("h0:1", "scale:none"))
    assert axes(result)[("input", "h0")] == (1, "option") and axes(result)[("input", "scale")] == (None, "option")
    shared = convert_and_prove(gru_model(), axes=("h0:none",))  # one initial state broadcast to every sample
    assert axes(shared)[("input", "h0")] == (None, "option")
    assert dims(shared.model.graph.input[2]) == [2, 1, 6]
    assert any(r.op == "GRU" and "broadcast" in r.change for r in shared.facts["rewritten"])


@pytest.mark.parametrize(("options", "error", "text"), [
    ({"axes": ("h0",)}, ValueError, "must be name:dim or name:none"),
    ({"axes": ("h0:x",)}, ValueError, "neither a dim"),
    ({"axes": ("h0:1", "h0:none")}, ValueError, "twice"),
])
def test_bad_axes_options(options, error, text) -> None:
    with pytest.raises(error, match=text):
        DynamicBatchOptions(**options)


@pytest.mark.parametrize(("options", "text"), [
    ({"axes": ("nope:1",)}, "axes: 'nope' is not an input of the model"),
    ({"axes": ("scale:0",)}, "input 'scale' has no dims"),
    ({"axes": ("h0:3",)}, "has 3 dims, so it has no dim 3"),
    ({"inputs": ("ids",), "axes": ("ids:none",)}, "is in inputs=[...] but axes says it has no batch"),
])
def test_axes_naming_what_the_model_lacks(options, text) -> None:
    with pytest.raises(UsageError) as err:
        run_pass(gru_model(), **options)
    assert text in str(err.value)


def test_inputs_that_really_disagree_are_named() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "g", [x, y], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(BatchDependenceError, match="inputs disagree") as err:
        run_pass(model)
    assert "input 'y'" in str(err.value) and "'x'" in str(err.value)
    with pytest.raises(BatchDependenceError, match=r"inputs disagree on the batch 1 \(y has 4 in dim 0\)"):
        run_pass(model, inputs=("x", "y"))
    with pytest.raises(BatchDependenceError, match="inputs disagree") as err:
        run_pass(model, axes=("y:1",))  # y's batch at dim 1 meets x's at dim 0 in the Add
    assert "'y'" in str(err.value)


def test_already_dynamic_state_model_is_left_alone() -> None:
    model = gru_model("batch")
    before = model.SerializeToString()
    result = run_pass(model)
    assert not result.modified and result.model.SerializeToString() == before
    assert result.facts["already_dynamic"] == {"ids": "batch", "h0": "batch"}
    assert axes(result) == {("input", "ids"): (0, "symbolic"), ("input", "table"): (None, "none"),
                            ("input", "h0"): (1, "symbolic"), ("input", "scale"): (None, "none")}
    assert "already dynamic" in result.refused[0]


def test_cli_verify_on_the_state_model(tmp_path: Path, cli) -> None:
    src = tmp_path / "gru.onnx"
    onnx.save(gru_model(), str(src))
    out = tmp_path / "out.onnx"
    proc = cli(src, "-p", "dynamic_batch", "--verify", "-b", "onnx", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)["passes"][0]
    assert {a["tensor"]: a["axis"] for a in record["facts"]["axes"]} == {"ids": 0, "table": None, "h0": 1, "scale": None, "y": 0, "h_n": 1}
    assert record["batch_check"]["passed"] and record["batch_check"]["input_axes"] == {"ids": 0, "table": None, "h0": 1, "scale": None}
    converted = onnx.load(str(out))
    assert dims(converted.graph.input[2]) == [2, "batch", 6]


# ---- silero-vad ------------------------------------------------------------------------------------


def silero(name: str) -> onnx.ModelProto:
    """A model file silero-vad ships (found, never imported: pip install --no-deps is enough)."""
    spec = importlib.util.find_spec("silero_vad")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "data" / name
        if path.is_file():
            return onnx.load(str(path))
    pytest.skip(f"silero-vad is not installed: pip install --no-deps {SILERO} (make test installs it)")


@pytest.mark.parametrize("name", ["silero_vad.onnx", "silero_vad_16k_op15.onnx"])
def test_silero_as_shipped_is_dynamic_and_left_alone(name: str) -> None:
    model = silero(name)
    before = model.SerializeToString()
    result = run_pass(model)
    assert not result.modified and result.model.SerializeToString() == before
    assert set(result.facts["already_dynamic"]) == {"input", "state"}
    found = axes(result)
    assert found[("input", "input")][0] == 0 and found[("input", "state")][0] == 1 and found[("input", "sr")] == (None, "none")


def stacked_equal(original: onnx.ModelProto, converted: onnx.ModelProto, samples: list[dict[str, np.ndarray]], axes: dict[str, int | None]) -> None:
    """Like check_batch_stacking, on given samples (e.g. the sample rate the If branches switch on; the seeded check feeds 0 or 1)."""
    runs = [run_session(make_session(original), s) for s in samples]
    stacked = {k: v if axes[k] is None else np.concatenate([s[k] for s in samples], axes[k]) for k, v in samples[0].items()}
    got = run_session(make_session(converted), stacked)
    for name, want in runs[0].items():
        if axes[name] is not None:
            want = np.concatenate([r[name] for r in runs], axes[name])
        assert got[name].shape == want.shape
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def _branch(name: str, nodes: list[onnx.NodeProto], out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])])


def if_model(cond_from_batch: bool = False) -> onnx.ModelProto:
    """x [1,4], state [2,1,4], scalar flag: If(flag == 1) adds state[0] else subtracts state[1]; then If(x.shape[-1] == 4)."""
    zero, one, last = (numpy_helper.from_array(np.array(v, dtype=np.int64), n) for v, n in ((0, "zero"), (1, "one"), (0 if cond_from_batch else -1, "last")))
    nodes = [
        helper.make_node("Equal", ["flag", "one"], ["is_one"]),
        helper.make_node("If", ["is_one"], ["mixed"], then_branch=_branch("then", [helper.make_node("Gather", ["state", "zero"], ["s0"]), helper.make_node("Add", ["x", "s0"], ["t"])], "t"),
                         else_branch=_branch("else", [helper.make_node("Gather", ["state", "one"], ["s1"]), helper.make_node("Sub", ["x", "s1"], ["e"])], "e")),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "last"], ["size"]),
        helper.make_node("Equal", ["size", "one" if cond_from_batch else "four"], ["static_cond"]),
        helper.make_node("If", ["static_cond"], ["y"], then_branch=_branch("relu", [helper.make_node("Relu", ["mixed"], ["r"])], "r"),
                         else_branch=_branch("neg", [helper.make_node("Neg", ["mixed"], ["n"])], "n")),
    ]
    inits = [zero, one, last, numpy_helper.from_array(np.array(4, dtype=np.int64), "four")]
    graph = helper.make_graph(nodes, "if_state", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]), helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 4]),
                                                  helper.make_tensor_value_info("flag", TensorProto.INT64, [])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    check_model(model)
    return model


def test_if_on_a_scalar_walks_both_branches_and_a_static_condition_one() -> None:
    original = if_model()
    result = convert_and_prove(original)
    assert axes(result)[("input", "state")] == (1, "found") and axes(result)[("input", "flag")] == (None, "none")
    rng = np.random.default_rng(0)
    for flag in (0, 1):
        samples = [{"x": rng.standard_normal((1, 4)).astype(np.float32), "state": rng.standard_normal((2, 1, 4)).astype(np.float32), "flag": np.array(flag)} for _ in range(3)]
        stacked_equal(original, result.model, samples, {"x": 0, "state": 1, "flag": None, "y": 0})
    with pytest.raises(BatchDependenceError, match=r"'static_cond'.*batch size"):  # x.shape[0] == 1: refused, named
        run_pass(if_model(cond_from_batch=True))


@pytest.mark.parametrize("name", ["silero_vad_16k_op15.onnx", "silero_vad_op18_ifless.onnx"])
def test_silero_fixed_batch_converts(name: str) -> None:
    original = with_dims(silero(name), SILERO_FIXED)
    result = convert_and_prove(original)
    assert axes(result) == {
        ("input", "input"): (0, "main"), ("input", "state"): (1, "found"), ("input", "sr"): (None, "none"),
        ("output", "output"): (0, "analysis"), ("output", "stateN"): (1, "analysis"),
    }
    inputs = {vi.name: dims(vi) for vi in result.model.graph.input}
    assert inputs == {"input": ["batch", 512], "state": [2, "batch", 128], "sr": []}
    rng = np.random.default_rng(0)
    for batch in BATCHES:  # the 16 kHz branch too: seeded checks feed sr 0 or 1
        samples = [{"input": rng.standard_normal((1, 512)).astype(np.float32) * 0.1, "state": rng.standard_normal((2, 1, 128)).astype(np.float32) * 0.1,
                    "sr": np.array(16000, dtype=np.int64)} for _ in range(batch)]
        stacked_equal(original, result.model, samples, {"input": 0, "state": 1, "sr": None, "output": 0, "stateN": 1})


def test_cli_verify_on_silero(tmp_path: Path, cli) -> None:
    src = tmp_path / "silero_fixed.onnx"
    onnx.save(with_dims(silero("silero_vad_16k_op15.onnx"), SILERO_FIXED), str(src))
    out = tmp_path / "out.onnx"
    proc = cli(src, "-p", "dynamic_batch", "--verify", "-b", "onnx", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "batch check (batch N vs N stacked batch-1 runs): ok" in proc.stdout
    assert {vi.name: dims(vi) for vi in onnx.load(str(out)).graph.input}["state"] == [2, "batch", 128]
