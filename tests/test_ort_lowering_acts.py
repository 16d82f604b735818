"""The ORT lowering with the ranges ``qdq`` records: every quantized Conv fuses whatever activation follows it.

Each small model (ONNX built here, seeded weights) goes through the real ``qdq`` pass with ``--calib-data``
(an .npz of seeded samples), then through ``lower_for_ort_cpu``, as ``-b ort`` does. Checked:

- fusion: in ORT's optimized graph (``optimized_model_filepath``) every Conv is a QLinearConv;
- accuracy: cosine to the fp32 model >= 0.99 on other seeded samples; and the fused graph equals the same
  lowered graph run unfused (``session.disable_quant_qdq``) to within the rounding of the requantizations
  (see :func:`test_fused_equals_unfused`);
- without ``refit`` and ``extend`` nothing changes from the canonical grid (``test_ort_lowering.py``), and with
  ``extend`` alone the canonical pairs keep their grid: only the added pairs add error.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.convert_job import ConvertRequest, convert
from converter.plugin_manager import load_plugins
from converter.plugins.ort import _graph, _pads, _ranges, _windows, lower_for_ort_cpu

C = 16
SAMPLES = 16


class Net:
    """A float model under construction: seeded weights, nodes appended in order."""

    def __init__(self, seed: int, shape: list[int]) -> None:
        self.rng = np.random.default_rng(seed)
        self.shape = shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def _name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value: np.ndarray) -> str:
        name = self._name("k")
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, rank: int = 2, **attrs: object) -> str:
        w = self.rng.standard_normal((cout, cin // group, *[k] * rank)).astype(np.float32) * np.float32(1.5 / np.sqrt(cin // group * k**rank))
        b = self.rng.standard_normal(cout).astype(np.float32) * np.float32(0.1)
        attrs.setdefault("pads", [k // 2] * 2 * rank)
        return self.op("Conv", [x, self.const(w), self.const(b)], group=group, **attrs)

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def hardswish_written_out(self, x: str) -> str:
        """x * clip(x + 3, 0, 6) / 6, as Paddle and older PyTorch exports write HardSwish."""
        clip = self.op("Clip", [self.op("Add", [x, self.const(np.float32(3))]), self.const(np.float32(0)), self.const(np.float32(6))])
        return self.op("Div", [self.op("Mul", [x, clip]), self.const(np.float32(6))])

    def model(self, y: str) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *self.shape[1:]])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], self.inits)
        model = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
        assert model.graph.output[0].type.tensor_type.HasField("shape"), "shape inference gives the output's shape"
        del model.graph.value_info[:]
        return model


def conv_silu() -> onnx.ModelProto:
    n = Net(1, [1, 8, 16, 16])
    return n.model(n.conv(n.silu(n.conv(n.silu(n.conv("x", 8, C)), C, C)), C, C))


def conv_hardswish() -> onnx.ModelProto:
    n = Net(2, [1, 8, 16, 16])
    h = n.op("HardSwish", [n.conv("x", 8, C)])
    return n.model(n.conv(n.op("HardSwish", [n.conv(h, C, C, group=C)]), C, C, k=1))


def conv_prelu() -> onnx.ModelProto:
    n = Net(3, [1, 8, 16, 16])
    slope = n.const(np.full((C, 1, 1), 0.25, np.float32))
    return n.model(n.conv(n.op("PRelu", [n.conv("x", 8, C), slope]), C, C))


def conv1d_chain() -> onnx.ModelProto:
    n = Net(4, [1, 8, 64])
    a = n.op("LeakyRelu", [n.conv("x", 8, C, k=5, rank=1)], alpha=0.1)
    b = n.silu(n.conv(a, C, C, k=3, rank=1, group=4))
    return n.model(n.conv(n.op("Relu", [n.conv(b, C, C, k=3, rank=1, strides=[2])]), C, C, k=1, rank=1))


def conv_concat() -> onnx.ModelProto:
    n = Net(5, [1, 8, 16, 16])
    a, b = n.silu(n.conv("x", 8, C)), n.hardswish_written_out(n.conv("x", 8, C, k=1))
    return n.model(n.conv(n.op("Concat", [a, b], axis=1), 2 * C, C))


def conv_maxpool() -> onnx.ModelProto:
    n = Net(6, [1, 8, 16, 16])
    a = n.silu(n.conv("x", 8, C))
    p = n.op("MaxPool", [a], kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1])
    r = n.op("MaxPool", [n.op("Relu", [n.conv(p, C, C)])], kernel_shape=[2, 2], strides=[2, 2])
    return n.model(n.conv(r, C, C))


def squeeze_excite() -> onnx.ModelProto:
    """Conv -> HardSwish -> SE (GlobalAveragePool, 1x1 Conv, Relu, 1x1 Conv, HardSigmoid, Mul) -> Conv."""
    n = Net(7, [1, 8, 16, 16])
    h = n.op("HardSwish", [n.conv("x", 8, C)])
    s = n.op("HardSigmoid", [n.conv(n.op("Relu", [n.conv(n.op("GlobalAveragePool", [h]), C, 4, k=1)]), 4, C, k=1)], alpha=1 / 6, beta=0.5)
    return n.model(n.conv(n.op("Mul", [h, s]), C, C))


def pad_conv() -> onnx.ModelProto:
    n = Net(8, [1, 8, 16, 16])
    a = n.op("HardSwish", [n.conv("x", 8, C)])
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pad_amounts")
    n.inits.append(pads)
    p = n.op("Pad", [a, "pad_amounts"], mode="constant")
    return n.model(n.conv(n.op("HardSwish", [n.conv(p, C, C, strides=[2, 2], pads=[1, 1, 0, 0])]), C, C))


MODELS = {f.__name__: f for f in (conv_silu, conv_hardswish, conv_prelu, conv1d_chain, conv_concat, conv_maxpool, squeeze_excite, pad_conv)}


def _samples(model: onnx.ModelProto, count: int, seed: int) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).standard_normal((count, *dims)).astype(np.float32)


@pytest.fixture(scope="module")
def plugins():  # type: ignore[no-untyped-def]
    return load_plugins(entry_points_enabled=False)


def _canonical(name: str, tmp: Path, plugins) -> tuple[onnx.ModelProto, onnx.ModelProto]:  # type: ignore[no-untyped-def]
    """(fp32 model, the qdq pass's canonical model with its recorded ranges)."""
    model = MODELS[name]()
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp / f"{name}.onnx"))
    np.savez(tmp / "calib.npz", x=_samples(model, SAMPLES, 0))
    req = ConvertRequest(model=tmp / f"{name}.onnx", pipeline="qdq", backend="onnx", output=tmp / "canonical.onnx", pass_inputs={"calib_data": str(tmp / "calib.npz")})
    convert(req, plugins)
    return model, onnx.load(str(tmp / "canonical.onnx"))


def _session(model: onnx.ModelProto, unfused: bool = False, optimized: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if unfused:  # every Q/DQ computed as written
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, x: np.ndarray, unfused: bool = False) -> np.ndarray:
    return _session(model, unfused).run(None, {"x": x})[0]


def _optimized_ops(model: onnx.ModelProto, tmp: Path) -> Counter[str]:
    _session(model, optimized=tmp / "optimized.onnx")
    return Counter(n.op_type for n in onnx.load(str(tmp / "optimized.onnx")).graph.node)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_conv_fuses(name: str, tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    model, canonical = _canonical(name, tmp_path, plugins)
    outputs = {o.name for o in model.graph.output}
    convs = sum(n.op_type == "Conv" and n.output[0] not in outputs for n in model.graph.node)  # graph outputs stay float
    before = _optimized_ops(lower_for_ort_cpu(canonical, extend=False, refit=False).model, tmp_path)
    low = lower_for_ort_cpu(canonical)
    onnx.checker.check_model(low.model, full_check=True)
    after = _optimized_ops(low.model, tmp_path)
    assert after["QLinearConv"] == convs and after["Conv"] == 1, f"{name}: {dict(after)}"
    assert before["QLinearConv"] < convs, "the canonical graph alone left some Conv unfused (else this model tests nothing)"
    x = _samples(model, 8, 1)
    assert cosine(_run(low.model, x), _run(model, x)) >= 0.99


def _with_last_q_exposed(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model with the uint8 tensor the last Conv reads (through its DequantizeLinear) as a second output."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    last = [n for n in m.graph.node if n.op_type == "Conv"][-1]
    q_out = next(n for n in m.graph.node if n.output[0] == last.input[0]).input[0]
    m.graph.output.append(helper.make_tensor_value_info(q_out, TensorProto.UINT8, None))
    return m, q_out


@pytest.mark.parametrize("name", list(MODELS))
def test_fused_equals_unfused(name: str, tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    """ORT's fused kernels compute what the lowered Q/DQ graph says, to within requantization rounding.

    Weights as uint8/128: ORT's U8U8 kernels are exact on every CPU (U8S8 saturates on x86 without VNNI,
    ``_cpu``). The fused QLinear* ops requantize in fixed point where the unfused graph rounds a float, so
    a value may land one step of its pair apart, and that step goes on through the next layers: compared
    on the uint8 tensor the last Conv reads, measured at most 3 steps apart and on under 1.1% of the
    values; allowed 4 steps and 3%.
    """
    _, canonical = _canonical(name, tmp_path, plugins)
    low, q_out = _with_last_q_exposed(lower_for_ort_cpu(canonical, weights="u8", refit=True).model)
    x = _samples(canonical, 8, 1)
    (fused, fused_q), (unfused, unfused_q) = (_session(low, u).run(None, {"x": x}) for u in (False, True))
    steps = np.abs(fused_q.astype(np.int32) - unfused_q.astype(np.int32))
    assert steps.max() <= 4 and (steps > 0).mean() <= 0.03, f"{q_out}: {steps.max()} steps, {(steps > 0).mean():.2%} of the values"
    assert cosine(fused, unfused) >= 0.99999


@pytest.mark.parametrize("name", list(MODELS))
def test_error_stays_that_of_the_canonical_graph(name: str, tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    """The added pairs quantize more tensors, but over their own ranges (asymmetric, cut to what the next op
    reads) and with the canonical pairs refit: the error to fp32 (1 - cosine) stays within 1.5x that of the
    canonical graph run unfused (measured 0.69x to 1.03x), and the outputs within cosine 0.999 of it (measured
    >= 0.9994). Without refit, the canonical pairs keep their grid exactly (zero point 128, same scale), except
    after an op with a known floor (HardSwish, SiLU: ``_floors``), whose pairs span [floor, amax]."""
    model, canonical = _canonical(name, tmp_path, plugins)
    x = _samples(model, 8, 1)
    ref = _run(model, x)
    canon = _run(canonical, x, unfused=True)
    canon_err = 1 - cosine(canon, ref)
    lowered = _run(lower_for_ort_cpu(canonical, refit=True).model, x)
    assert 1 - cosine(lowered, ref) <= 1.5 * canon_err + 1e-6
    assert cosine(lowered, canon) >= 0.999
    same_grid = lower_for_ort_cpu(canonical)  # refit is off by default
    kept = {n.input[0]: n for n in same_grid.model.graph.node if n.op_type == "QuantizeLinear"}
    inits = {t.name: numpy_helper.to_array(t) for t in same_grid.model.graph.initializer}
    for t in set(same_grid.shifted) - set(same_grid.same_grid):  # after MaxPool, reshapes...: the grid of the op's input
        assert int(inits[kept[t].input[2]]) == 128, f"{t}: the canonical grid, shifted (q_u8 = q_s8 + 128)"
    assert 1 - cosine(_run(same_grid.model, x), ref) <= 1.5 * canon_err + 1e-6


def test_pad_folds_into_the_conv(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    """A zero Pad before a Conv (here read through the Conv's Q/DQ pair) becomes the Conv's pads: exact, since 0 is on every grid."""
    model, canonical = _canonical("pad_conv", tmp_path, plugins)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    after = next(n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] == pad.output[0])
    low = lower_for_ort_cpu(canonical)
    assert low.folded_pads == [pad.name] and not any(n.op_type == "Pad" for n in low.model.graph.node)
    conv = next(n for n in low.model.graph.node if n.name == after)
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [1, 1, 1, 1], "the Pad's end pads added to the Conv's"
    folded = onnx.ModelProto()
    folded.CopyFrom(canonical)
    assert _pads.fold_pads(folded.graph) == [pad.name]
    x = _samples(model, 4, 1)
    np.testing.assert_allclose(_run(folded, x, unfused=True), _run(canonical, x, unfused=True), rtol=0, atol=1e-5)


def test_a_layer_qdq_kept_float_stays_float(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    """Excluded (or budgeted out) layers are not quantized behind the pass's back."""
    model = conv_silu()
    middle = [n.name for n in model.graph.node if n.op_type == "Conv"][1]
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", x=_samples(model, SAMPLES, 0))
    convert(ConvertRequest(model=tmp_path / "m.onnx", pipeline=f"qdq{{exclude=[{middle}]}}", backend="onnx", output=tmp_path / "c.onnx",
                           pass_inputs={"calib_data": str(tmp_path / "calib.npz")}), plugins)
    ops = _optimized_ops(lower_for_ort_cpu(onnx.load(str(tmp_path / "c.onnx"))).model, tmp_path)
    assert ops["QLinearConv"] == 1 and ops["Conv"] == 2


def test_without_ranges_only_derived_ones_are_used(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    _, canonical = _canonical("conv_silu", tmp_path, plugins)
    refit_only = lower_for_ort_cpu(canonical, extend=False, refit=True)
    assert refit_only.added == [] and refit_only.refit, "extend=False: the pairs there are refit, none added"
    del canonical.metadata_props[:]
    assert lower_for_ort_cpu(canonical, extend=False, refit=True).refit == [], "no recorded ranges: nothing to refit to"
    low = lower_for_ort_cpu(canonical)
    assert low.ranges == 0 and low.ranges_derived > 0 and low.added  # from the pairs the model has (``_derived``)


def test_ort_backend_writes_the_fused_artifact(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    model = squeeze_excite()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", x=_samples(model, SAMPLES, 0))
    out = convert(ConvertRequest(model=tmp_path / "m.onnx", pipeline="qdq", backend="ort", output=tmp_path / "m.ort.onnx",
                                 pass_inputs={"calib_data": str(tmp_path / "calib.npz")}), plugins)
    manifest = out.artifact.manifest
    assert manifest["qdq_pairs_added"] > 0 and manifest["qdq_pairs_refit"] == 0 and manifest["activation_ranges"] > 0  # refit is opt-in
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "m.ort.onnx")).graph.node)
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 1, dict(ops)


def _with_ranges(value: str) -> onnx.ModelProto:
    model = conv_silu()
    model.metadata_props.add(key=_ranges.RANGES_KEY, value=value)
    return model


def test_ranges_contract() -> None:
    good = '{"format": 1, "calibrator": "entropy", "ranges": {"a": {"min": -1.0, "max": 3.0, "amax": 2.0}, "b": {"min": NaN, "max": 1, "amax": 1}}}'
    ranges = _ranges.activation_ranges(_with_ranges(good))
    assert list(ranges) == ["a"], "a range that is not finite is no range"
    assert _ranges.activation_ranges(conv_silu()) == {}
    for bad in ("{not json", '{"format": 2, "ranges": {}}', '{"format": 1, "ranges": {"a": {"min": 0}}}'):
        with pytest.raises(_ranges.RangesError, match=_ranges.RANGES_KEY):
            lower_for_ort_cpu(_with_ranges(bad))
    a = ranges["a"]
    scale, zero = a.uint8()  # [-1, 2]: the observed min, the calibrator's clip on the max
    assert np.isclose(scale, 3 / 255) and zero == 85
    assert a.uint8(non_negative=True) == (2 / 255, 0), "after Relu: zero point 0, so ORT drops the Relu"
    assert a.uint8(window=(-0.5, np.inf)) == (2.5 / 255, 51), "cut to what the readers tell apart"
    assert _ranges.ActivationRange(0.0, 0.0, 0.0).uint8() is None


def test_written_out_hardswish_window(tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    """Below -3 HardSwish (written out as x * clip(x + 3, 0, 6) / 6) gives 0: the pair on its input starts at -3."""
    model = conv_concat()
    g = model.graph
    index = _graph.GraphIndex.of(g)
    conv_out = next(n.input[0] for n in g.node if n.op_type == "Add")
    assert _windows.reader_window(conv_out, g, index) == (-3.0, np.inf)
    silu_in = next(n.input[0] for n in g.node if n.op_type == "Sigmoid")
    assert _windows.reader_window(silu_in, g, index) == _windows.UNBOUNDED


def _gelu_ffn() -> onnx.ModelProto:
    """A transformer FFN as qdq writes it: DQ(x) -> MatMul(DQ(w1)) + b -> GELU (Div, Erf, Add, Mul, Mul) -> Q/DQ -> MatMul(DQ(w2)),
    with recorded ranges for the GELU's tensors."""
    rng = np.random.default_rng(0)
    h, f = 8, 16
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(rng.integers(-100, 100, (h, f)).astype(np.int8), "w1"), numpy_helper.from_array(rng.standard_normal(f).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.integers(-100, 100, (f, h)).astype(np.int8), "w2"), numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
             numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2"), numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w1", "ws", "z"], ["w1d"]), helper.make_node("MatMul", ["xd", "w1d"], ["m"]),
             helper.make_node("Add", ["m", "b1"], ["a"]), helper.make_node("Div", ["a", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["e1", "half"], ["g"]), helper.make_node("Mul", ["a", "g"], ["gelu"]),
             helper.make_node("QuantizeLinear", ["gelu", "s", "z"], ["gq"]), helper.make_node("DequantizeLinear", ["gq", "s", "z"], ["gd"]),
             helper.make_node("DequantizeLinear", ["w2", "ws", "z"], ["w2d"]), helper.make_node("MatMul", ["gd", "w2d"], ["y"])]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", h])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ranges = {"a": {"min": -4.0, "max": 4.0, "amax": 4.0}, "g": {"min": 0.0, "max": 1.0, "amax": 1.0}, "m": {"min": -4.0, "max": 4.0, "amax": 4.0}}
    model.metadata_props.add(key=_ranges.RANGES_KEY, value=json.dumps({"format": 1, "calibrator": "test", "ranges": ranges}))
    return model


def test_no_pair_where_a_float_reader_would_pay_two_passes() -> None:
    """GELU after a MatMul: its input is read by the float Div too, so a pair on it (for the final Mul as QLinearMul) would
    cost a QuantizeLinear and a DequantizeLinear pass and quantize the Erf's input: none is added."""
    low = lower_for_ort_cpu(_gelu_ffn())
    assert low.added == [], low.added
    ops = Counter(n.op_type for n in low.model.graph.node)
    assert ops["QuantizeLinear"] == 2, dict(ops)  # the canonical ones only
