"""qdq beyond plain CNNs: layers inside If/Loop bodies, transformer placement, and the accuracy budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.calibration.expose import expose
from converter.errors import UsageError
from converter.graph_info import iter_graphs
from converter.ort_session import make_session, run_session
from converter.passes.qdq import QdqOptions, QdqPass
from tests.conftest import Cli
from tests.test_pass_qdq import LOG, _ctx

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _w(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def if_model() -> onnx.ModelProto:
    """x -> If(flag): then Conv(x, w_outer) -> Relu -> Conv(., w_then, a Constant in the branch); else Conv(x, w_else) -> Relu.

    ``w_outer`` is an initializer of the main graph read inside the branch (how torch exports If branches).
    """
    rng = np.random.default_rng(1)
    w_then = helper.make_node("Constant", [], ["w_then"], name="w_then", value=_w(rng, "w_then", 4, 4, 3, 3))
    then_g = helper.make_graph([
        helper.make_node("Conv", ["x", "w_outer"], ["t1"], name="then_conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["t1"], ["t2"], name="then_relu"),
        w_then,
        helper.make_node("Conv", ["t2", "w_then"], ["t3"], name="then_conv2", pads=[1, 1, 1, 1]),
    ], "then", [], [helper.make_tensor_value_info("t3", TensorProto.FLOAT, ["N", 4, 8, 8])])
    else_g = helper.make_graph([
        helper.make_node("Conv", ["x", "w_else"], ["e1"], name="else_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["e1"], ["e2"], name="else_relu"),
    ], "else", [], [helper.make_tensor_value_info("e2", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=[_w(rng, "w_else", 4, 3, 3, 3)])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)],
        "if_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=[_w(rng, "w_outer", 4, 3, 3, 3)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def loop_model() -> onnx.ModelProto:
    """h = x; 3 times: h = Tanh(MatMul(h, w) + b); the MatMul lives in the Loop body."""
    rng = np.random.default_rng(2)
    body = helper.make_graph([
        helper.make_node("MatMul", ["h_in", "w"], ["m"], name="body_matmul"),
        helper.make_node("Add", ["m", "b"], ["a"], name="body_bias"),
        helper.make_node("Tanh", ["a"], ["h_out"], name="body_tanh"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
    ], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", 16])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body)],
        "loop_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        initializer=[numpy_helper.from_array(np.array(3, np.int64), "trips"), _w(rng, "w", 16, 16, scale=0.4), _w(rng, "b", 16, scale=0.1)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _quantized_layers(model: onnx.ModelProto) -> dict[str, bool]:
    """Every Conv/Gemm/MatMul, subgraphs included -> whether an input comes from DequantizeLinear."""
    out = {}
    for g in iter_graphs(model.graph):
        dq = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
        out.update({n.name: any(x in dq for x in n.input) for n in g.node if n.op_type in LAYERS})
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_if_branch_layers_are_quantized_and_calibrated_on_the_values_they_see(tmp_path: Path) -> None:
    model = if_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", x=x, flag=np.array(True))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    result = QdqPass(QdqOptions(calibrator="minmax")).run(copy, _ctx(Path(f"{tmp_path / 'feeds.npz'}?axes=flag:none")))
    q = result.model
    onnx.checker.check_model(q, full_check=True)
    # else_conv reads x, a main-graph tensor with a range, so it is quantized though its branch never ran
    assert _quantized_layers(q) == {"then_conv1": True, "then_conv2": True, "else_conv": True}
    assert result.facts["quantized_in_subgraphs"] == 3
    # the then branch read x (an outer tensor) and w_outer (an outer initializer): its int8 copy lives in the branch, the float one is gone
    assert "w_outer" not in {t.name for t in q.graph.initializer} and "w_outer" in result.facts["removed_constants"]
    then_g = next(a.g for a in q.graph.node[0].attribute if a.name == "then_branch")
    assert {n.op_type for n in then_g.node} >= {"QuantizeLinear", "DequantizeLinear"}
    # the scale of t2 (inside the branch) is its calibrated max / 127
    exposed = expose(model, ["t2"])
    t2 = run_session(make_session(exposed.model), {"x": x, "flag": np.array(True)})[exposed.outputs["t2"]]
    assert result.facts["activation_scales"]["t2"] == pytest.approx(float(np.abs(t2).max()) / 127, rel=1e-6)
    held = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    ref = run_session(make_session(model), {"x": held, "flag": np.array(True)})["y"]
    got = run_session(make_session(q), {"x": held, "flag": np.array(True)})["y"]
    assert _cosine(ref, got) > 0.995
    names = [n.name for g in iter_graphs(q.graph) for n in g.node]
    assert len(names) == len(set(names))


RUNS = """
import numpy as np

def runs():
    rng = np.random.default_rng(5)
    for i in range(12):
        yield {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32), "flag": np.array(i % 2 == 0)}
"""


def test_both_branches_calibrated_from_runs_that_take_each(tmp_path: Path) -> None:
    onnx.save(if_model(), str(tmp_path / "m.onnx"))
    (tmp_path / "branch_runs.py").write_text(RUNS)
    out = tmp_path / "q.onnx"
    res = Cli(tmp_path)(tmp_path / "m.onnx", "-p", "qdq{calibrator=minmax}", "--calib-data", "branch_runs:runs", "-b", "onnx", "-o", out, "--json")
    assert res.returncode == 0, res.stderr
    assert _quantized_layers(onnx.load(str(out))) == {"then_conv1": True, "then_conv2": True, "else_conv": True}


def test_else_branch_never_taken_stays_float_with_its_reason(tmp_path: Path) -> None:
    np.savez(tmp_path / "feeds.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32), flag=np.array(True))
    model = if_model()
    else_g = next(a.g for a in model.graph.node[0].attribute if a.name == "else_branch")
    else_g.node[0].input[0] = "x_else"  # the else branch reads a tensor of its own
    else_g.node.insert(0, helper.make_node("Neg", ["x"], ["x_else"], name="else_neg"))
    result = QdqPass(QdqOptions(calibrator="minmax")).run(model, _ctx(Path(f"{tmp_path / 'feeds.npz'}?axes=flag:none")))
    assert _quantized_layers(result.model)["else_conv"] is False
    assert any(r.startswith("else_conv (Conv): activation 'x_else' never ran during calibration") for r in result.refused), result.refused
    assert result.facts["not_reached"] == ["x_else"]


def test_loop_body_matmul_is_quantized_on_every_iteration_s_values(tmp_path: Path) -> None:
    model = loop_model()
    x = np.random.default_rng(3).standard_normal((32, 16)).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", x=x)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    result = QdqPass(QdqOptions(calibrator="minmax")).run(copy, _ctx(tmp_path / "feeds.npz"))
    onnx.checker.check_model(result.model, full_check=True)
    assert _quantized_layers(result.model) == {"body_matmul": True}
    # h_in takes x, then tanh values: its range is the max over all three iterations (x dominates)
    assert result.facts["activation_scales"]["h_in"] == pytest.approx(float(np.abs(x).max()) / 127, rel=1e-6)
    ref = run_session(make_session(model), {"x": x})["y"]
    got = run_session(make_session(result.model), {"x": x})["y"]
    assert _cosine(ref, got) > 0.995


def attention_model() -> onnx.ModelProto:
    """One attention block: Q/K/V MatMuls, scores + mask -> Softmax -> MatMul V, residual Add -> LayerNormalization."""
    rng = np.random.default_rng(4)
    d = 16
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Add", ["scores", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["o", "x"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], name="ln", axis=-1),
    ]
    inits = [_w(rng, n, d, d, scale=0.25) for n in ("wq", "wk", "wv", "wo")]
    inits += [numpy_helper.from_array(np.ones(d, np.float32), "gamma"), numpy_helper.from_array(np.zeros(d, np.float32), "beta")]
    graph = helper.make_graph(nodes, "attn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, d]), helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, d])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_transformer_placement_follows_the_bert_recipe(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 1, 6), np.float32)
    mask[:, :, 4:] = -np.inf  # padded positions, masked with -inf: excluded from ranges, never a crash
    np.savez(tmp_path / "feeds.npz", x=rng.standard_normal((16, 6, 16)).astype(np.float32), mask=mask)
    result = QdqPass(QdqOptions(calibrator="minmax")).run(attention_model(), _ctx(tmp_path / "feeds.npz"))
    layers = _quantized_layers(result.model)
    assert layers == dict.fromkeys(["q_proj", "k_proj", "v_proj", "qk", "pv", "o_proj"], True)
    by_node = {n.name: n for n in result.model.graph.node}
    dq = {o for n in result.model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert all(x in dq for x in by_node["qk"].input) and all(x in dq for x in by_node["pv"].input)  # both activations of the attention matmuls
    assert not any(x in dq for x in by_node["mask_add"].input) and not any(x in dq for x in by_node["residual"].input)
    reasons = "\n".join(result.refused)
    assert "mask_add (Add): an attention mask added before Softmax" in reasons
    assert "residual (Add): a residual Add feeding LayerNormalization" in reasons
    assert "ln (LayerNormalization): normalization runs in float" in reasons and "softmax (Softmax): runs in float" in reasons
    assert not {"mask", "masked", "res"} & set(result.facts["ranges"])  # the -inf of the mask never reaches a range


def test_budget_keeps_the_sensitive_layer_float_and_reports_the_curve(tmp_path: Path) -> None:
    """One MatMul reads an activation with an outlier channel (x100): per-tensor int8 crushes the rest; the budget finds it."""
    rng = np.random.default_rng(6)
    d = 32
    x = rng.standard_normal((96, d)).astype(np.float32)
    x[:, 3] *= 100.0
    ws = [(rng.standard_normal((d, d)) * 0.2).astype(np.float32) for _ in range(3)]
    ws[0][3, :] /= 100.0  # the float model stays well scaled
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"), helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"], name="mm1"), helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", d])],
                              initializer=[numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    np.savez(tmp_path / "feeds.npz", x=x)
    plain = QdqPass(QdqOptions(calibrator="minmax", samples=64)).run(_copy(model), _ctx(tmp_path / "feeds.npz"))
    budget = QdqPass(QdqOptions(calibrator="minmax", samples=64, target_cosine=0.999, holdout=32)).run(_copy(model), _ctx(tmp_path / "feeds.npz"))
    facts = budget.facts["budget"]
    assert facts["met"] and facts["achieved"] >= 0.999 > facts["all_quantized"]
    assert list(facts["kept_float"]) == ["mm0"] and _quantized_layers(budget.model) == {"mm0": False, "mm1": True, "mm2": True}
    assert facts["curve"][0] == [0, facts["all_quantized"]] and facts["samples"] == 32
    assert any(r.startswith("mm0 (MatMul): accuracy budget (cosine >= 0.999): quantizing it alone costs") for r in budget.refused)
    assert budget.facts["samples"] == 64  # 96 samples: 64 calibrate, the next 32 are held out
    held = x[64:]
    ref = run_session(make_session(model), {"x": held})["y"]
    assert _cosine(ref, run_session(make_session(budget.model), {"x": held})["y"]) > _cosine(ref, run_session(make_session(plain.model), {"x": held})["y"])


def test_budget_needs_held_out_samples(tmp_path: Path) -> None:
    np.savez(tmp_path / "feeds.npz", x=np.zeros((4, 16), np.float32) + 1)
    with pytest.raises(UsageError, match="held-out"):
        QdqPass(QdqOptions(target_cosine=0.99, holdout=8)).run(loop_model(), _ctx(tmp_path / "feeds.npz"))
    with pytest.raises(ValueError, match="not both"):
        QdqOptions(target_cosine=0.99, target_top1=0.9)


def test_budget_from_the_command_line(tmp_path: Path) -> None:
    onnx.save(attention_model(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "feeds.npz", x=rng.standard_normal((40, 6, 16)).astype(np.float32), mask=np.zeros((40, 1, 6), np.float32))
    res = Cli(tmp_path)(tmp_path / "m.onnx", "-p", "qdq{target_cosine=0.999,holdout=8,samples=32}", "--calib-data", tmp_path / "feeds.npz",
                        "-b", "onnx", "-o", tmp_path / "q.onnx", "--json")
    assert res.returncode == 0, res.stderr
    facts = next(p["facts"] for p in json.loads(res.stdout)["passes"] if p["name"] == "qdq")
    assert facts["budget"]["samples"] == 8 and (facts["budget"]["achieved"] >= 0.999 or facts["budget"]["met"] is False)
    LOG.info("budget: %s", facts["budget"])


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_golden_check_judges_a_qdq_artifact_by_int8_policy_on_its_exact_arithmetic(tmp_path: Path) -> None:
    """`golden check` without --precision reads the artifact: Q/DQ -> int8; the onnx backend runs Q/DQ unfused."""
    from tests.test_pass_qdq import net_model

    onnx.save(net_model(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "held.npz", x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    cli = Cli(tmp_path)
    assert cli("golden", "record", tmp_path / "m.onnx", "--inputs", tmp_path / "held.npz", "-o", tmp_path / "case").returncode == 0
    res = cli(tmp_path / "m.onnx", "-p", "qdq{calibrator=minmax}", "--calib-data", tmp_path / "calib.npz", "-b", "onnx", "-o", tmp_path / "q.onnx")
    assert res.returncode == 0, res.stderr
    res = cli("golden", "check", tmp_path / "q.onnx", tmp_path / "case")
    assert res.returncode == 0 and "tolerance (int8)" in res.stdout, res.stdout + res.stderr
    res = cli("golden", "check", tmp_path / "q.onnx", tmp_path / "case", "--precision", "fp32")
    assert res.returncode != 0 and "at fp32" in res.stderr


def test_ranges_of_every_activation_are_recorded_for_backends(tmp_path: Path) -> None:
    """Besides the placed tensors, every float activation's min/max is measured (reduced in the graph) and kept in metadata."""
    from converter.passes.qdq import ACTIVATION_RANGES, read_activation_ranges
    from tests.test_pass_qdq import net_model

    model = net_model()
    x = np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", x=x)
    result = QdqPass(QdqOptions(calibrator="entropy")).run(_copy(model), _ctx(tmp_path / "feeds.npz"))
    ranges = read_activation_ranges(result.model)
    assert result.facts["recorded_ranges"] == len(ranges) and [p.key for p in result.model.metadata_props].count(ACTIVATION_RANGES) == 1
    produced = [o for n in model.graph.node for o in n.output]
    assert set(produced) <= set(ranges) and "x" in ranges  # the Conv outputs too, which no Q/DQ reads
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in ("c1", "s"))
    seen = run_session(make_session(probe), {"x": x})
    for t in ("c1", "s"):
        assert ranges[t]["min"] == pytest.approx(float(seen[t].min()), rel=1e-6) and ranges[t]["max"] == pytest.approx(float(seen[t].max()), rel=1e-6)
    assert read_activation_ranges(QdqPass(QdqOptions(record_ranges=False)).run(_copy(model), _ctx(tmp_path / "feeds.npz")).model) == {}


def test_op_types_win_over_the_float_recipe_and_pooling_is_not_a_layernorm(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "feeds.npz", x=rng.standard_normal((16, 6, 16)).astype(np.float32), mask=np.zeros((16, 1, 6), np.float32))
    result = QdqPass(QdqOptions(op_types=("Softmax",))).run(attention_model(), _ctx(tmp_path / "feeds.npz"))
    assert "softmax" in result.facts["nodes"] and not any(r.startswith("softmax (Softmax)") for r in result.refused)
    # a CNN's residual Add read by ReduceMean as global pooling stays a residual Add to quantize
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
net (float[N, 4, 6, 6] x) => (float[N, 4] y) <float[4, 4, 1, 1] w = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}> {
    c = Conv(x, w)
    s = Add(c, x)
    y = ReduceMean <axes = [2, 3], keepdims = 0> (s)
}""")
    np.savez(tmp_path / "cnn.npz", x=rng.standard_normal((8, 4, 6, 6)).astype(np.float32))
    cnn = QdqPass(QdqOptions()).run(model, _ctx(tmp_path / "cnn.npz"))
    assert cnn.facts["quantized_ops"] == {"Conv": 1, "Add": 1}, cnn.refused
