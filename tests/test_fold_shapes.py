"""fold_constants on partially static shapes: the static elements of a dynamic shape fold, the dynamic ones stay.

Every folded model is checked with the ONNX checker (full) and on ONNX Runtime at two
different values of each dynamic dim, against the model before folding: outputs must be
bit for bit equal (graph optimizations and weight prepacking off, so both graphs run the
same kernels), and the folded model must also load with ONNX Runtime's full optimizations.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper, numpy_helper

from converter.feeds import seeded_feeds
from converter.graph_info import graph_inputs, node_count
from converter.ort_session import make_session, run_session, session_options
from tests.test_pass_fold_constants import fold, ops


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _exact_session(model: onnx.ModelProto):
    options = session_options(opt_level="disable", log_severity=4)
    options.add_session_config_entry("session.disable_prepacking", "1")
    return make_session(model, options=options)


def assert_same(before: onnx.ModelProto, after: onnx.ModelProto, *dims: dict[str, tuple[int, ...]]) -> None:
    """Bit-for-bit equal outputs for each set of input shapes; the result also loads fully optimized."""
    make_session(after)  # ONNX Runtime accepts the folded graph with every optimization on
    want_sess, got_sess = _exact_session(before), _exact_session(after)
    for shapes in dims:
        feeds = seeded_feeds(graph_inputs(before), seed=0, overrides=shapes)
        want, got = run_session(want_sess, feeds), run_session(got_sess, feeds)
        assert list(got) == list(want)
        for name in want:
            assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} at {shapes}")


def parse(text: str, **weights: tuple[int, ...]) -> onnx.ModelProto:
    """An ONNX text model plus seeded float32 initializers of the given shapes."""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------- (a) TF-style "same" padding

SCALARS = """
  i2 = Constant<value = int64 {2}>()   i3 = Constant<value = int64 {3}>()   zero = Constant<value = int64 {0}>()
  one = Constant<value = int64 {1}>()   two = Constant<value = int64 {2}>()   kern = Constant<value = int64 {3}>()
  ax0 = Constant<value = int64[1] {0}>()   z2 = Constant<value = int64[2] {0, 0}>()
"""


def same_pad(p: str, x: str) -> str:
    """TensorFlow 'SAME' padding for a 3x3 stride-2 conv, computed from ``Shape(x)`` as TF exports do."""
    lines = [f"{p}s = Shape({x})"]
    for d, i in (("h", "i2"), ("w", "i3")):
        lines += [
            f"{p}{d} = Gather<axis = 0>({p}s, {i})", f"{p}{d}1 = Add({p}{d}, one)", f"{p}{d}o = Div({p}{d}1, two)",
            f"{p}{d}2 = Sub({p}{d}o, one)", f"{p}{d}3 = Mul({p}{d}2, two)", f"{p}{d}4 = Add({p}{d}3, kern)",
            f"{p}{d}5 = Sub({p}{d}4, {p}{d})", f"{p}{d}p = Max({p}{d}5, zero)", f"{p}{d}b = Div({p}{d}p, two)",
            f"{p}{d}a = Sub({p}{d}p, {p}{d}b)", f"{p}{d}bu = Unsqueeze({p}{d}b, ax0)", f"{p}{d}au = Unsqueeze({p}{d}a, ax0)",
        ]
    lines += [f"{p}pads = Concat<axis = 0>(z2, {p}hbu, {p}wbu, z2, {p}hau, {p}wau)", f"{p}xp = Pad({x}, {p}pads)",
              f"{p}y = Conv<strides = [2, 2]>({p}xp, {p}weight)"]
    return "\n".join(f"  {line}" for line in lines)


TF_SAME = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,17,17] x) => (float[N,4,5,5] y) {{
{SCALARS}
{same_pad("a", "x")}
  r = Relu(ay)
{same_pad("b", "r")}
  y = Identity(by)
}}
"""


def tf_same_model() -> onnx.ModelProto:
    return parse(TF_SAME, aweight=(8, 3, 3, 3), bweight=(4, 8, 3, 3))


def test_tf_same_padding_pads_become_constants_and_fuse_into_conv() -> None:
    model = tf_same_model()
    assert node_count(model) > 60
    result = fold(model)
    assert ops(result.model) == ["Conv", "Relu", "Conv"]  # what onnxsim and onnxslim make of it
    pads = [list(helper.get_attribute_value(a)) for n in result.model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads"]
    assert pads == [[1, 1, 1, 1], [1, 1, 1, 1]]  # 17 -> 9 and 9 -> 5: two pixels each, one on each side
    assert_same(model, result.model, {"x": (1, 3, 17, 17)}, {"x": (3, 3, 17, 17)})


def test_tf_same_padding_without_fusion_leaves_pads_with_constant_inputs() -> None:
    model = tf_same_model()
    result = fold(model, fuse_conv=False)
    assert ops(result.model) == ["Pad", "Conv", "Relu", "Pad", "Conv"]
    inits = {t.name for t in result.model.graph.initializer}
    assert all(n.input[1] in inits for n in result.model.graph.node if n.op_type == "Pad")
    assert result.facts["shapes_folded"] > 20
    assert_same(model, result.model, {"x": (2, 3, 17, 17)}, {"x": (5, 3, 17, 17)})


# ---------------------------------------------------------------- (b) transformer-style reshapes

ATTENTION = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[B,S,64] x) => (float[B,S,64] y) {
  i0 = Constant<value = int64 {0}>()   i1 = Constant<value = int64 {1}>()   i2 = Constant<value = int64 {2}>()
  i3 = Constant<value = int64 {3}>()   ax0 = Constant<value = int64[1] {0}>()   heads = Constant<value = int64 {4}>()
  heads1 = Constant<value = int64[1] {4}>()
  q = MatMul(x, wq)
  s = Shape(q)
  b = Gather<axis = 0>(s, i0)
  n = Gather<axis = 0>(s, i1)
  d = Gather<axis = 0>(s, i2)
  hd = Div(d, heads)
  b1 = Mul(b, i1)
  bu = Unsqueeze(b1, ax0)
  nu = Unsqueeze(n, ax0)
  hdu = Unsqueeze(hd, ax0)
  shp = Concat<axis = 0>(bu, nu, heads1, hdu)
  h = Reshape(q, shp)
  t = Transpose<perm = [0, 2, 1, 3]>(h)
  hdf = Cast<to = 1>(hd)
  scale = Sqrt(hdf)
  ts = Div(t, scale)
  sm = Softmax<axis = -1>(ts)
  back = Transpose<perm = [0, 2, 1, 3]>(sm)
  s2 = Shape(back)
  b2 = Gather<axis = 0>(s2, i0)
  n2 = Gather<axis = 0>(s2, i1)
  hh = Gather<axis = 0>(s2, i2)
  dd = Gather<axis = 0>(s2, i3)
  m = Mul(hh, dd)
  b2u = Unsqueeze(b2, ax0)
  n2u = Unsqueeze(n2, ax0)
  mu = Unsqueeze(m, ax0)
  shp2 = Concat<axis = 0>(b2u, n2u, mu)
  y = Reshape(back, shp2)
}
"""


def test_reshapes_from_the_shape_of_their_own_input_get_constant_shapes() -> None:
    model = parse(ATTENTION, wq=(64, 64))
    result = fold(model)
    assert ops(result.model) == ["MatMul", "Reshape", "Transpose", "Div", "Softmax", "Transpose", "Reshape"]
    shapes = [numpy_helper.to_array(initializer(result.model, n.input[1])).tolist() for n in result.model.graph.node if n.op_type == "Reshape"]
    assert shapes == [[0, 0, 4, 16], [0, 0, 64]]  # batch and sequence copied from the input, the rest static
    scale = numpy_helper.to_array(initializer(result.model, next(n.input[1] for n in result.model.graph.node if n.op_type == "Div")))
    assert scale.shape == () and scale.dtype == np.float32 and scale == np.float32(4.0)
    assert_same(model, result.model, {"x": (2, 5, 64)}, {"x": (3, 7, 64)})


def test_a_reshape_with_two_dynamic_dims_it_cannot_copy_keeps_its_arithmetic() -> None:
    """[B*4, S, 16] from [B, 4, S, 16]: neither B*4 nor S sits at its input position, only one may be -1."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[B,4,S,16] x) => (float[C,S,16] y) {
      s = Shape(x)
      i0 = Constant<value = int64 {0}>()   i1 = Constant<value = int64 {1}>()   i2 = Constant<value = int64 {2}>()
      i3 = Constant<value = int64 {3}>()   ax0 = Constant<value = int64[1] {0}>()
      b = Gather<axis = 0>(s, i0)
      h = Gather<axis = 0>(s, i1)
      n = Gather<axis = 0>(s, i2)
      d = Gather<axis = 0>(s, i3)
      bh = Mul(b, h)
      bhu = Unsqueeze(bh, ax0)
      nu = Unsqueeze(n, ax0)
      du = Unsqueeze(d, ax0)
      shp = Concat<axis = 0>(bhu, nu, du)
      y = Reshape(x, shp)
    }
    """)
    result = fold(model)
    assert ops(result.model) == ["Shape", "Gather", "Gather", "Mul", "Unsqueeze", "Unsqueeze", "Concat", "Reshape"]
    folded = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert folded["du"].tolist() == [16] and folded["h"].shape == ()  # the static elements did fold
    assert_same(model, result.model, {"x": (2, 4, 3, 16)}, {"x": (3, 4, 5, 16)})


# ---------------------------------------------------------------- (c) scalars stay scalars


def test_range_inputs_folded_from_shapes_stay_rank_0() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,6] x) => (float[L] y) {
      s = Shape(x)
      i0 = Constant<value = int64 {0}>()   i1 = Constant<value = int64 {1}>()
      n = Gather<axis = 0>(s, i0)
      c = Gather<axis = 0>(s, i1)
      start = Sub(c, c)
      delta = Div(c, c)
      limit = Mul(n, c)
      r = Range(start, limit, delta)
      y = Cast<to = 1>(r)
    }
    """)
    result = fold(model)
    assert ops(result.model) == ["Shape", "Gather", "Mul", "Range", "Cast"]
    mul, rng = result.model.graph.node[2], result.model.graph.node[3]
    for name, want in ((rng.input[0], 0), (rng.input[2], 1), (mul.input[1], 6)):
        t = initializer(result.model, name)
        assert list(t.dims) == [] and t.data_type == onnx.TensorProto.INT64 and numpy_helper.to_array(t) == want
    assert_same(model, result.model, {"x": (2, 6)}, {"x": (3, 6)})


def affine_grid_expanded() -> onnx.ModelProto:
    """AffineGrid (opset 20) as its function body, the way exporters that inline functions write it."""
    from onnx.backend.test.case.node import function_testcase_helper

    node = helper.make_node("AffineGrid", ["theta", "size"], ["grid"], align_corners=0)
    types = [helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [2, 2, 3]), helper.make_tensor_type_proto(onnx.TensorProto.INT64, [4])]
    expanded, _ = function_testcase_helper(node, types, "fold")
    nodes, opsets = expanded[0]
    graph = helper.make_graph(nodes, "affine_grid", [helper.make_tensor_value_info("theta", onnx.TensorProto.FLOAT, [2, 2, 3]),
                                                     helper.make_tensor_value_info("size", onnx.TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("grid", onnx.TensorProto.FLOAT, [2, 5, 6, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), *[o for o in opsets if o.domain]], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_affine_grid_expansion_still_runs_on_onnx_runtime_after_folding() -> None:
    """Its If branches read Range inputs as 1-element tensors: ONNX Runtime accepts that only while the
    If stays opaque, so the If's condition (Size of a static input) must not become an initializer."""
    model = affine_grid_expanded()
    result = fold(model)
    assert "If" in ops(result.model)
    theta = np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32)
    feeds = {"theta": theta, "size": np.array([2, 3, 5, 6], np.int64)}
    want = run_session(make_session(model), feeds)["grid"]
    got = run_session(make_session(result.model), feeds)["grid"]  # fully optimized: it inlines constant Ifs
    np.testing.assert_array_equal(got, want)
    assert got.shape == (2, 5, 6, 2)


# ---------------------------------------------------------------- (d) dynamic dims never fold


def test_a_gathered_dynamic_dim_is_not_folded() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3] x) => (float[M,3] y) {
      s = Shape(x)
      i0 = Constant<value = int64 {0}>()   i1 = Constant<value = int64 {1}>()   ax0 = Constant<value = int64[1] {0}>()
      n = Gather<axis = 0>(s, i0)
      c = Gather<axis = 0>(s, i1)
      n2 = Add(n, c)
      nu = Unsqueeze(n2, ax0)
      cu = Unsqueeze(c, ax0)
      shp = Concat<axis = 0>(nu, cu)
      y = ConstantOfShape<value = float[1] {0.5}>(shp)
    }
    """)
    result = fold(model)
    assert ops(result.model) == ["Shape", "Gather", "Add", "Unsqueeze", "Concat", "ConstantOfShape"]
    assert numpy_helper.to_array(initializer(result.model, "c")) == 3
    assert_same(model, result.model, {"x": (2, 3)}, {"x": (4, 3)})


def test_integer_semantics_match_onnx_runtime() -> None:
    """Div truncates toward zero, Mod takes the divisor's sign, Slice clamps and steps backwards."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,7,5] x) => (int64[K] k, bool[2] e) {
      s = Shape(x)
      i2 = Constant<value = int64 {2}>()
      five = Gather<axis = 0>(s, i2)
      c12 = Constant<value = int64 {12}>()   c3 = Constant<value = int64 {3}>()   cm3 = Constant<value = int64 {-3}>()
      neg7 = Sub(five, c12)
      d = Div(neg7, i2)
      m1 = Mod(neg7, c3)
      m2 = Mod(five, cm3)
      mx = Max(d, m2, cm3)
      ax0 = Constant<value = int64[1] {0}>()   st = Constant<value = int64[1] {-1}>()   en = Constant<value = int64[1] {0}>()
      step = Constant<value = int64[1] {-1}>()
      rev = Slice(s, st, en, ax0, step)
      scal = Unsqueeze(d, ax0)
      m1u = Unsqueeze(m1, ax0)
      m2u = Unsqueeze(m2, ax0)
      mxu = Unsqueeze(mx, ax0)
      cat = Concat<axis = 0>(scal, m1u, m2u, mxu, rev)
      k = Cast<to = 7>(cat)
      pair = Concat<axis = 0>(m1u, m2u)
      e = Equal(pair, rev)
    }
    """)
    result = fold(model)
    assert "Shape" not in ops(result.model)  # every element read is static
    assert_same(model, result.model, {"x": (1, 7, 5)}, {"x": (3, 7, 5)})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice about the TorchScript exporter
def test_torch_export_with_tf_same_padding_folds_like_onnxsim(tmp_path) -> None:
    import torch
    import torch.nn.functional as F  # noqa: N812

    class SameConv(torch.nn.Conv2d):
        """timm's Conv2dSame: the padding is computed from the input's shape in forward."""

        def forward(self, x):
            ih, iw = x.shape[-2:]
            kh, kw = self.weight.shape[-2:]
            sh, sw = self.stride
            pad_h = torch.clamp(((ih + sh - 1) // sh - 1) * sh + kh - ih, min=0)
            pad_w = torch.clamp(((iw + sw - 1) // sw - 1) * sw + kw - iw, min=0)
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    torch.manual_seed(0)
    net = torch.nn.Sequential(SameConv(3, 8, 3, stride=2), torch.nn.ReLU(), SameConv(8, 8, 3, stride=2, groups=8), torch.nn.ReLU(), SameConv(8, 4, 5)).eval()
    path = tmp_path / "same.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 33, 33),), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    model = onnx.load(str(path))
    assert ops(model).count("Pad") == 3 and ops(model).count("Shape") >= 3
    result = fold(model)
    assert ops(result.model) == ["Conv", "Relu", "Conv", "Relu", "Conv"]  # onnxsim's and onnxslim's result too
    assert_same(model, result.model, {"x": (1, 3, 33, 33)}, {"x": (3, 3, 33, 33)})


# ---------------------------------------------------------------- rewrites around folded values

DUPLICATES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,8] x) => (float[N,8] y) {
  a = Constant<value = float[8] {0, 0, 0, 0, 0, 0, 0, 0}>()   b = Constant<value = float[8] {0, 0, 0, 0, 0, 0, 0, 0}>()
  one = Constant<value = float {1}>()
  p = Add(x, a)
  q = Mul(p, one)
  r = Dropout(q)
  c = Cast<to = 1>(r)
  u = Relu(c)
  v = Relu(c)
  w = Add(u, v)
  k = Add(w, b)
  y = Identity(k)
}
"""


def test_no_ops_and_duplicates_go_and_the_graph_output_keeps_its_name() -> None:
    model = parse(DUPLICATES)
    result = fold(model)
    assert ops(result.model) == ["Relu", "Add"]  # +0, *1, Dropout, Cast to float, the twin Relu, the output Identity
    assert [o.name for o in result.model.graph.output] == ["y"] and result.model.graph.node[-1].output[0] == "y"
    assert result.facts["rewrites"]["no_op"] == 6 and result.facts["rewrites"]["duplicate_nodes"] == 1
    assert_same(model, result.model, {"x": (2, 8)}, {"x": (3, 8)})
    assert ops(fold(model, simplify=False).model) == ["Add", "Mul", "Dropout", "Cast", "Relu", "Relu", "Add", "Add", "Identity"]


def test_batch_norm_and_per_channel_affine_ops_fold_into_conv_weights() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,8,8] x) => (float[N,4,8,8] y) {
      c = Conv<pads = [1, 1, 1, 1]>(x, w)
      bn = BatchNormalization<epsilon = 0.001>(c, scale, bias, mean, var)
      m = Mul(bn, k)
      y = Add(m, shift)
    }
    """, w=(4, 3, 3, 3), scale=(4,), bias=(4,), mean=(4,), var=(4,), k=(1, 4, 1, 1), shift=(4, 1, 1))
    model.graph.initializer[-3].CopyFrom(numpy_helper.from_array(np.abs(numpy_helper.to_array(model.graph.initializer[-3])) + 0.5, "var"))
    result = fold(model)
    assert ops(result.model) == ["Conv"] and result.facts["rewrites"]["conv_fused"] == 3
    assert ops(fold(model, fuse_conv=False).model) == ["Conv", "BatchNormalization", "Mul", "Add"]
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want, got = (run_session(make_session(m), {"x": x})["y"] for m in (model, result.model))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float rounding only
