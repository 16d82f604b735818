"""The qdq accuracy budget: rank nodes by measured cost, keep the fewest in float that meet a cosine or top-1 target.

The models are small MLPs (MatMul -> Relu chains) with one layer made much more sensitive: the layer
before it has one output channel 100x the others (and the sensitive layer reads that channel with
weights 100x smaller, so the float model is unchanged), so its per-tensor activation scale
flattens every other channel. Q/DQ are inserted by a minimal local builder (per-tensor activations,
per-output-channel weights, symmetric int8 as the qdq pass does), with every node not kept float.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.passes.qdq._budget import BudgetResult, fit_budget

LOG = logging.getLogger("test.qdq_budget")


def mlp(layers: int = 6, width: int = 16, outputs: int = 8, sensitive: int | None = 3, seed: int = 0, extra_output: bool = False,
        input_type: int = TensorProto.FLOAT) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """MatMul nodes mm0..mm{layers-1} with Relu between; ``mm{sensitive}`` reads an activation with one huge channel."""
    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal((width, outputs if i == layers - 1 else width)) / math.sqrt(width)).astype(np.float32) for i in range(layers)]
    if sensitive is not None:
        weights[sensitive - 1][:, 0] *= 100.0
        weights[sensitive][0, :] /= 100.0
    nodes, prev = [], "x"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["x"], ["x_f"], name="cast", to=TensorProto.FLOAT))
        prev = "x_f"
    for i in range(layers):
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"mm{i}"))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"], name=f"relu{i}"))
            prev = f"a{i}"
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])]
    if extra_output:
        outs.append(helper.make_tensor_value_info("a0", TensorProto.FLOAT, ["N", width]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", input_type, ["N", width])], outs,
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model, weights


def data(width: int = 16, samples: int = 64, batch: int = 16, seed: int = 1):
    x = np.random.default_rng(seed).standard_normal((samples, width)).astype(np.float32)

    def batches():
        for i in range(0, samples, batch):
            yield {"x": x[i : i + batch]}

    return x, batches


def amax_of(weights: list[np.ndarray], x: np.ndarray) -> dict[str, float]:
    """Per-tensor amax of each MatMul's activation input (calibration on the same data)."""
    out, a = {}, x.astype(np.float64)
    for i, w in enumerate(weights):
        out[f"mm{i}"] = float(np.max(np.abs(a)))
        a = a @ w
        a = np.maximum(a, 0) if i < len(weights) - 1 else a
    return out


def qdq_builder(model: onnx.ModelProto, amax: dict[str, float]):
    """build(kept): the model with Q/DQ on every MatMul not in ``kept`` (activation per tensor, weight per output channel)."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def build(kept: frozenset[str]) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        g, new = m.graph, []
        for node in g.node:
            if node.op_type == "MatMul" and node.name not in kept:
                p, (x, w) = node.name, node.input
                wv = weights[w]
                ws = np.where(np.abs(wv).max(axis=0) > 0, np.abs(wv).max(axis=0) / 127, 1).astype(np.float32)
                wq = np.clip(np.rint(wv / ws), -127, 127).astype(np.int8)
                g.initializer.extend([numpy_helper.from_array(np.array(amax[p] / 127, np.float32), f"{p}_s"), numpy_helper.from_array(np.array(0, np.int8), f"{p}_z"),
                                      numpy_helper.from_array(wq, f"{p}_wq"), numpy_helper.from_array(ws, f"{p}_ws"),
                                      numpy_helper.from_array(np.zeros(ws.shape, np.int8), f"{p}_wz")])
                new += [helper.make_node("QuantizeLinear", [x, f"{p}_s", f"{p}_z"], [f"{p}_xq"], name=f"{p}_Q"),
                        helper.make_node("DequantizeLinear", [f"{p}_xq", f"{p}_s", f"{p}_z"], [f"{p}_xdq"], name=f"{p}_DQ"),
                        helper.make_node("DequantizeLinear", [f"{p}_wq", f"{p}_ws", f"{p}_wz"], [f"{p}_wdq"], name=f"{p}_WDQ", axis=1)]
                node.input[0], node.input[1] = f"{p}_xdq", f"{p}_wdq"
            new.append(node)
        del g.node[:]
        g.node.extend(new)
        return m

    return build


def setup(layers: int = 6, sensitive: int | None = 3, samples: int = 64, **kw):
    model, weights = mlp(layers=layers, sensitive=sensitive, **kw)
    x, batches = data(samples=samples)
    return model, qdq_builder(model, amax_of(weights, x)), [f"mm{i}" for i in range(layers)], batches


def check_invariants(r: BudgetResult, n: int) -> None:
    ks = [k for k, _ in r.curve]
    assert ks == sorted(ks) and len(set(ks)) == len(ks) and ks[0] == 0 and r.curve[0][1] == r.all_quantized
    assert r.evaluations <= n + 2 * math.ceil(math.log2(n)) + 2
    assert dict(r.curve)[len(r.kept_float)] == r.achieved
    assert r.float_baseline == 1.0 and r.seconds > 0


def test_sensitive_node_ranks_first_and_alone_is_kept_float() -> None:
    model, build, nodes, batches = setup()
    r = fit_budget(model, build, nodes, batches, 0.999, log=LOG)
    assert r.all_quantized < 0.99  # one node ruins the model...
    ranked = sorted(r.sensitivity, key=lambda n: -r.sensitivity[n])
    assert ranked[0] == "mm3" and r.sensitivity["mm3"] > 10 * max(r.sensitivity[n] for n in ranked[1:])
    assert set(r.sensitivity) == set(nodes) and not r.estimated and not r.unmeasured
    assert list(r.kept_float) == ["mm3"] and r.kept_float["mm3"] == r.sensitivity["mm3"]  # ...and keeping it float is enough
    assert r.met and r.achieved >= 0.999 and r.metric == "cosine" and r.target == 0.999 and r.samples == 64
    check_invariants(r, len(nodes))
    assert r.evaluations == 1 + len(nodes) + 1  # all quantized, one per node, k=1
    quantized_all_but_mm3 = fit_budget(model, lambda kept: build(kept | {"mm3"}), nodes, batches, 0.999)
    assert quantized_all_but_mm3.all_quantized == r.achieved and quantized_all_but_mm3.kept_float == {}


def test_a_tighter_target_keeps_more_nodes_in_cost_order() -> None:
    model, build, nodes, batches = setup()
    loose = fit_budget(model, build, nodes, batches, 0.999)
    tight_target = (loose.achieved + 1.0) / 2  # between mm3 alone float and the float model
    r = fit_budget(model, build, nodes, batches, tight_target)
    ranked = sorted(nodes, key=lambda n: (-r.sensitivity[n], nodes.index(n)))
    assert r.met and r.achieved >= tight_target and len(r.kept_float) > 1
    assert list(r.kept_float) == ranked[: len(r.kept_float)]
    fewer = dict(r.curve).get(len(r.kept_float) - 1)
    assert fewer is None or fewer < tight_target  # the smallest k on the curve that meets it
    check_invariants(r, len(nodes))


def test_all_quantized_meeting_the_target_keeps_nothing() -> None:
    model, build, nodes, batches = setup(sensitive=None)
    r = fit_budget(model, build, nodes, batches, 0.99)
    assert r.met and r.kept_float == {} and r.evaluations == 1 and r.curve == [(0, r.all_quantized)] and r.achieved == r.all_quantized
    assert r.all_quantized >= 0.99


def test_unreachable_target_is_not_met_and_reports_the_best() -> None:
    model, build, nodes, batches = setup()
    r = fit_budget(model, build, nodes, batches, 1.0)
    assert not r.met and r.achieved < 1.0 and r.achieved == max(m for _, m in r.curve)
    assert len(r.kept_float) < len(nodes) and max(k for k, _ in r.curve) == len(nodes) - 1
    assert "not reached" in r.notes[-1]
    check_invariants(r, len(nodes))


def test_top1_on_a_classifier() -> None:
    model, build, nodes, batches = setup(layers=4, sensitive=2, outputs=10, samples=256)
    r = fit_budget(model, build, nodes, batches, 0.97, metric="top1")
    assert r.metric == "top1" and r.samples == 256
    assert r.all_quantized < 0.9 and r.met and r.achieved >= 0.97 and list(r.kept_float) == ["mm2"]
    assert all(k * 256 == round(k * 256) for k in [m for _, m in r.curve])  # fractions of the 256 rows
    check_invariants(r, len(nodes))


def test_nan_in_one_output_counts_as_cosine_zero() -> None:
    model, build, nodes, batches = setup(sensitive=None, extra_output=True)

    def poisoned(kept: frozenset[str]) -> onnx.ModelProto:
        m = build(kept)
        if "mm1" not in kept:  # quantizing mm1 "breaks" output y: y * NaN
            last = next(n for n in m.graph.node if "y" in n.output)
            last.output[0] = "y_raw"
            m.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
            m.graph.node.append(helper.make_node("Mul", ["y_raw", "nan"], ["y"], name="poison"))
        return m

    r = fit_budget(model, poisoned, nodes, batches, 0.99)
    assert r.all_quantized == 0.0 and r.sensitivity["mm1"] == 1.0
    assert list(r.kept_float) == ["mm1"] and r.met and r.achieved >= 0.99


def test_blocks_first_past_group_above() -> None:
    model, build, nodes, batches = setup(layers=9, sensitive=4)
    r = fit_budget(model, build, nodes, batches, 0.995, group_above=4)
    assert list(r.kept_float) == ["mm4"] and r.met
    assert set(r.estimated) == {f"mm{i}" for i in (0, 1, 2, 6, 7, 8)}  # cheap blocks of 3: not refined
    assert set(r.sensitivity) == set(nodes) and not r.unmeasured
    assert r.evaluations == 1 + 3 + 3 + 1 < len(nodes) + 1  # all quantized, 3 blocks, the costly block's 3 nodes, k=1
    check_invariants(r, len(nodes))


def test_max_evaluations_stops_the_sweep_and_ranks_unmeasured_last(caplog: pytest.LogCaptureFixture) -> None:
    model, build, nodes, batches = setup(sensitive=4)
    reserve = 2 * math.ceil(math.log2(len(nodes))) + 1
    with caplog.at_level(logging.INFO, logger="test.qdq_budget"):
        r = fit_budget(model, build, nodes, batches, 0.999, log=LOG, max_evaluations=1 + 3 + reserve)
    assert r.unmeasured == ["mm3", "mm4", "mm5"] and all(r.sensitivity[n] == 0.0 for n in r.unmeasured)
    assert r.evaluations <= 1 + 3 + reserve
    assert r.met and "mm4" in r.kept_float and list(r.kept_float)[-1] in r.unmeasured
    assert any("max_evaluations" in rec.getMessage() for rec in caplog.records) and "not measured" in r.notes[0]
    check_invariants(r, len(nodes))


def test_a_tight_cap_still_answers() -> None:
    model, build, nodes, batches = setup(sensitive=4)
    r = fit_budget(model, build, nodes, batches, 0.999, max_evaluations=3)
    assert r.evaluations <= 3 and r.unmeasured == nodes and any("max_evaluations" in note for note in r.notes)


def test_float16_input_gets_cast_feeds_and_progress_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    model, build, nodes, batches = setup(input_type=TensorProto.FLOAT16)
    with caplog.at_level(logging.INFO, logger="test.qdq_budget"):
        r = fit_budget(model, build, nodes, batches, 0.999, log=LOG)  # float32 feeds, float16 input
    assert list(r.kept_float) == ["mm3"] and r.met
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("evaluation 1 of" in m for m in messages) and any("planned" in m for m in messages)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"target": 1.5}, "target"), ({"target": 0.0}, "target"), ({"metric": "top5"}, "metric"),
    ({"nodes": ["mm0", "mm0"]}, "duplicate"), ({"max_evaluations": 0}, "max_evaluations"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    model, build, nodes, batches = setup(layers=2, sensitive=None)
    args = {"target": 0.99, **kwargs}
    with pytest.raises(ValueError, match=match):
        fit_budget(model, build, args.pop("nodes", nodes), batches, **args)


def test_batches_must_repeat() -> None:
    model, build, nodes, batches = setup(layers=2, sensitive=None)
    calls = []

    def shrinking():
        calls.append(1)
        yield from list(batches())[: 5 - len(calls)]

    with pytest.raises(ValueError, match="same batches"):
        fit_budget(model, build, nodes, shrinking, 0.99)
