"""The smooth_quant pass: exact float rewrites (LayerNorm fold, decomposed LayerNorm, a shared Mul), refusals,
the int8 accuracy it buys before qdq on outlier channels, a real MiniLM end to end, and its option errors."""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.calibration import CALIB_DATA, CALIB_RANDOM
from converter.errors import UsageError
from converter.flags import PassInputs
from converter.ort_session import make_session, run_session
from converter.pass_api import PassContext, PassResult
from converter.passes.fold_constants import FoldConstantsOptions, FoldConstantsPass
from converter.passes.qdq import QdqOptions, QdqPass
from converter.passes.smooth_quant import SmoothQuantOptions, SmoothQuantPass
from tests.conftest import Cli, save
from tests.real_models import BY_ID

LOG = logging.getLogger("test.smooth_quant")
D, T = 64, 8
OUTLIERS = [3, 17, 40]


def _ctx(data: Path | None, random: bool = False) -> PassContext:
    return PassContext(log=LOG, inputs=PassInputs({CALIB_DATA.key: None if data is None else str(data), CALIB_RANDOM.key: random}))


def _smooth(model: onnx.ModelProto, data: Path | None, **options: object) -> PassResult:
    result = SmoothQuantPass(SmoothQuantOptions(**options)).run(model, _ctx(data))  # type: ignore[arg-type]
    onnx.checker.check_model(result.model, full_check=True)
    return result


def _qdq(model: onnx.ModelProto, data: Path) -> onnx.ModelProto:
    return QdqPass(QdqOptions()).run(model, _ctx(data)).model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(run_session(make_session(model), feeds).values()))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name: str, *shape: object, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def outlier_x(n: int, seed: int, shape: tuple[int, ...] = (T, D)) -> np.ndarray:
    """Seeded activations with a few outlier channels (x50) on the last axis."""
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    x[..., [c % x.shape[-1] for c in OUTLIERS]] *= 50
    return x


def attention_block(seed: int = 0) -> onnx.ModelProto:
    """LayerNorm -> Q/K/V MatMuls (+bias) -> softmax attention -> output projection, as a trained model holds it:
    the LayerNorm's gamma is large on the outlier channels (x10) and the projections' rows there small (/50)."""
    rng = np.random.default_rng(seed)
    gamma = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
    gamma[OUTLIERS] *= 10
    inits = {"gamma": gamma, "beta": (0.1 * rng.standard_normal(D)).astype(np.float32), "temp": np.array(D**-0.5, np.float32)}
    for p in "qkvo":
        w = rng.standard_normal((D, D)) / np.sqrt(D)
        if p != "o":
            w[OUTLIERS] /= 50
        inits[f"w{p}"], inits[f"b{p}"] = w.astype(np.float32), np.zeros(D, np.float32)  # biases as initialized (a bias on v puts the
        # int8 error of probabilities x v, which smoothing does not touch, above the error this test measures)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1)]
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["h", f"w{p}"], [f"{p}0"], name=f"proj_{p}"), helper.make_node("Add", [f"{p}0", f"b{p}"], [p], name=f"bias_{p}")]
    nodes += [
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s0"], name="qk"),
        helper.make_node("Mul", ["s0", "temp"], ["s1"], name="scale"),
        helper.make_node("Softmax", ["s1"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="pv"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o0"], name="proj_o"),
        helper.make_node("Add", ["o0", "bo"], ["y"], name="bias_o"),
    ]
    return _model(nodes, [_vi("x", "N", T, D)], [_vi("y", "N", T, D)], inits)


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, x=outlier_x(64, seed=1))
    return path


def _assert_same_float(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    ref, got = _run(before, feeds), _run(after, feeds)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


# ---------------------------------------------------------------- exact float rewrites


def test_layernorm_group_shares_one_s_folded_into_gamma_and_beta(calib: Path) -> None:
    model = attention_block()
    original = copy.deepcopy(model)
    res = _smooth(model, calib)
    q = res.model
    h, ctx = res.facts["groups"]
    assert (h["tensor"], h["readers"], h["channels"]) == ("h", ["proj_q", "proj_k", "proj_v"], D)
    assert h["folded_into"].startswith("LayerNormalization 'ln'")
    assert h["outlier_ratio_before"] > 20 and h["outlier_ratio_after"] < 3, h
    ln = next(n for n in q.graph.node if n.op_type == "LayerNormalization")
    gamma, beta = _array(q, ln.input[1]), _array(q, ln.input[2])
    assert not np.allclose(gamma, _array(original, "gamma"))
    s = _array(original, "gamma") / gamma  # one s for the group: gamma/s and beta/s, W' = diag(s) W for each of Q, K, V
    np.testing.assert_allclose(beta, _array(original, "beta") / s, rtol=1e-5)
    for p in "qkv":
        reader = next(n for n in q.graph.node if n.name == f"proj_{p}")
        assert reader.input[0] == "h"  # no Mul between the LayerNorm and its readers
        np.testing.assert_allclose(_array(q, reader.input[1]), _array(original, f"w{p}") * s[:, None], rtol=1e-5)
    assert {"gamma", "beta", "wq", "wk", "wv"}.isdisjoint(t.name for t in q.graph.initializer)  # replaced, not kept
    # the attention context (produced by a MatMul) is the other group: the only Mul added is its own
    assert ctx["tensor"] == "ctx" and ctx["folded_into"].startswith("Mul ")
    assert res.facts["inserted_mul"] == 1 and Counter(n.op_type for n in q.graph.node)["Mul"] == 2
    assert res.facts["calibration"]["samples"] == 64 and res.refused == []
    _assert_same_float(original, q, {"x": outlier_x(16, seed=2)})


def test_other_producer_gets_one_mul_shared_by_matmul_and_gemm_others_keep_the_original(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((16, 8)).astype(np.float32), "w2": rng.standard_normal((6, 16)).astype(np.float32), "b2": np.ones(6, np.float32)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w1"], ["y1"], name="mm"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y2"], name="gemm", transB=1),
        helper.make_node("Sigmoid", ["r"], ["y3"], name="sig"),
    ]
    model = _model(nodes, [_vi("x", "N", 16)], [_vi("y1", "N", 8), _vi("y2", "N", 6), _vi("y3", "N", 16)], inits)
    original = copy.deepcopy(model)
    np.savez(tmp_path / "c.npz", x=outlier_x(32, seed=1, shape=(16,)))
    res = _smooth(model, tmp_path / "c.npz")
    (group,) = res.facts["groups"]
    assert group["readers"] == ["mm", "gemm"] and group["folded_into"].startswith("Mul ")
    muls = [n for n in res.model.graph.node if n.op_type == "Mul"]
    assert len(muls) == 1 and muls[0].input[0] == "r"
    by_name = {n.name: n for n in res.model.graph.node}
    assert by_name["mm"].input[0] == by_name["gemm"].input[0] == muls[0].output[0]
    assert by_name["sig"].input[0] == "r"  # a non-smoothed reader keeps the original activation
    s = 1.0 / _array(res.model, muls[0].input[1])
    np.testing.assert_allclose(_array(res.model, by_name["gemm"].input[1]), inits["w2"] * s[None, :], rtol=1e-5)  # transB: columns
    feeds = {"x": outlier_x(8, seed=2, shape=(16,))}
    for ref, got in zip(run_session(make_session(original), feeds).values(), run_session(make_session(res.model), feeds).values()):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_decomposed_layernorm_folds_into_its_mul_and_add(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = {"eps": np.array(1e-5, np.float32), "gamma": (1 + rng.standard_normal(D)).astype(np.float32), "beta": rng.standard_normal(D).astype(np.float32),
             "w": rng.standard_normal((D, 32)).astype(np.float32)}
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["d"]), helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]), helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["xn"]), helper.make_node("Mul", ["gamma", "xn"], ["g"], name="mul_gamma"),
        helper.make_node("Add", ["g", "beta"], ["h"], name="add_beta"), helper.make_node("MatMul", ["h", "w"], ["y"], name="proj"),
    ]
    model = _model(nodes, [_vi("x", "N", T, D)], [_vi("y", "N", T, 32)], inits, opset=13)
    original = copy.deepcopy(model)
    np.savez(tmp_path / "c.npz", x=outlier_x(16, seed=1))
    res = _smooth(model, tmp_path / "c.npz")
    assert res.facts["groups"][0]["folded_into"].startswith("Mul(gamma) 'mul_gamma' and Add(beta) 'add_beta'")
    assert res.facts["inserted_mul"] == 0 and sum(n.op_type == "Mul" for n in res.model.graph.node) == 2
    _assert_same_float(original, res.model, {"x": outlier_x(8, seed=2)})


def test_groups_that_cannot_be_smoothed_are_left_alone_with_the_reason(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    inits = {"w": w, "wd": w.astype(np.float64), "cond": np.array(True)}
    body = [helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["bo"], name=f"inner_{b}")], b, [], [_vi("bo", "N", 4)]) for b in ("then", "else")]
    nodes = [
        helper.make_node("Relu", ["a0"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["y1"], name="const_w"),
        helper.make_node("MatMul", ["a", "other"], ["y2"], name="act_w"),  # a reader without a constant weight: the group is skipped
        helper.make_node("MatMul", ["u", "w"], ["y3"], name="unknown_k"),  # last dim unknown
        helper.make_node("MatMul", ["dd", "wd"], ["y4"], name="double_w"),  # not float32
        helper.make_node("If", ["cond"], ["y5"], name="branch", then_branch=body[0], else_branch=body[1]),
    ]
    ins = [_vi("a0", "N", 8), _vi("other", 8, 4), _vi("u", "N", "K"), _vi("dd", "N", 8, elem=TensorProto.DOUBLE)]
    outs = [_vi("y1", "N", 4), _vi("y2", "N", 4), _vi("y3", "N", 4), _vi("y4", "N", 4, elem=TensorProto.DOUBLE), _vi("y5", "N", 4)]
    model = _model(nodes, ins, outs, inits)
    res = _smooth(copy.deepcopy(model), None)  # nothing to smooth: no calibration data is needed
    assert not res.modified and res.facts["smoothed_groups"] == 0
    text = "\n".join(res.refused)
    assert "'a' (read by const_w, act_w): act_w (MatMul) reads a weight 'other' that is not a constant" in text
    assert "'u' (read by unknown_k): its last dim is unknown" in text
    assert "double_w (MatMul): weight 'wd' is DOUBLE, not FLOAT" in text
    assert "inner_then (MatMul): inside a subgraph" in text and "inner_else (MatMul): inside a subgraph" in text
    assert len(res.refused) == 5 and res.model == model


def test_no_calibration_data_is_a_one_line_error() -> None:
    with pytest.raises(UsageError, match="--calib-data") as err:
        SmoothQuantPass(SmoothQuantOptions()).run(attention_block(), _ctx(None))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- what it buys: int8 accuracy


def test_smoothing_before_qdq_raises_int8_accuracy_on_outlier_channels(calib: Path) -> None:
    model = attention_block()
    feeds = {"x": outlier_x(32, seed=2)}
    ref = _run(model, feeds)
    plain = _cos(_run(_qdq(copy.deepcopy(model), calib), feeds), ref)
    smoothed_model = _smooth(copy.deepcopy(model), calib).model
    smoothed = _cos(_run(_qdq(smoothed_model, calib), feeds), ref)
    print(f"\nint8 cosine vs fp32 (attention block, outlier channels): qdq {plain:.5f}, smooth_quant,qdq {smoothed:.5f}")
    assert smoothed > 0.99 and smoothed - plain > 0.03, (plain, smoothed)  # measured: 0.92843 -> 0.99687


# ---------------------------------------------------------------- a real transformer: MiniLM-L6


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, onnx.ModelProto, Path]:
    """MiniLM's file, the model after fold_constants (its int8 weights become float initializers), seeded token feeds."""
    m = BY_ID["minilm_l6"]
    path = m.path()
    if path is None:
        pytest.skip(f"{m.package} is not installed: {m.install_hint} (make test installs it)")
    folded = FoldConstantsPass(FoldConstantsOptions()).run(onnx.load(str(path)), PassContext(log=LOG)).model
    calib = tmp_path_factory.mktemp("minilm") / "tokens.npz"
    np.savez(calib, **m.feeds(1, 32))
    return path, folded, calib


@pytest.mark.slow
def test_minilm_smoothing_keeps_float_outputs(minilm: tuple[Path, onnx.ModelProto, Path]) -> None:
    _, folded, calib = minilm
    res = _smooth(copy.deepcopy(folded), calib)
    facts = res.facts
    # 6 layers x (Q/K/V input, attention output, FFN input, FFN output); post-LN BERT: every LayerNorm output is also
    # read by a residual Add, so 1/s goes into a Mul and the residual keeps the original
    assert facts["smoothed_groups"] == 24 and facts["inserted_mul"] == 24 and res.refused == []
    assert [g["readers"] for g in facts["groups"][:1]] == [["node_MatMul_48", "node_MatMul_56", "node_MatMul_64"]]
    feeds = BY_ID["minilm_l6"].feeds(2, 4)
    ref, got = _run(folded, feeds), _run(res.model, feeds)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_minilm_int8_with_and_without_smoothing_through_the_cli(cli: Cli, minilm: tuple[Path, onnx.ModelProto, Path], tmp_path: Path) -> None:
    path, folded, calib = minilm
    feeds = BY_ID["minilm_l6"].feeds(2, 8)
    ref = _run(folded, feeds)
    cosines = {}
    for pipeline in ("fold_constants,qdq", "fold_constants,smooth_quant,qdq"):
        out = tmp_path / f"{pipeline.replace(',', '_')}.onnx"
        res = cli(path, "-p", pipeline, "--calib-data", calib, "-b", "onnx", "-o", out, "--json", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        passes = {p["name"]: p for p in json.loads(res.stdout)["passes"]}
        if "smooth_quant" in passes:
            assert passes["smooth_quant"]["facts"]["smoothed_groups"] == 24
        cosines[pipeline] = _cos(_run(onnx.load(str(out)), feeds), ref)
    plain, smoothed = cosines.values()
    print(f"\nMiniLM-L6 int8 cosine vs fp32 (8 seeded token sequences): fold_constants,qdq {plain:.5f}, fold_constants,smooth_quant,qdq {smoothed:.5f}")
    assert smoothed > plain, cosines  # measured: 0.88925 -> 0.94259 (entropy calibration, alpha 0.5)


# ---------------------------------------------------------------- options


def test_alpha_out_of_range_is_a_one_line_error(cli: Cli, tmp_path: Path) -> None:
    path = save(attention_block(), tmp_path / "block.onnx")
    res = cli(path, "-p", "smooth_quant{alpha=1.5},qdq", "--calib-random", "-b", "onnx", "-o", tmp_path / "out.onnx")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == ["convert: error: pass 'smooth_quant' option 'alpha': 1.5 is outside its range [0, 1]"], lines
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(ValueError, match="alpha must be in"):
        SmoothQuantOptions(alpha=-0.1)
