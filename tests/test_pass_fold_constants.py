"""fold_constants: tiny models in ONNX text, checked for op list, checker validity and ORT equivalence.

Inputs are seeded (numpy default_rng(0)); folded models must reproduce the
original outputs exactly (atol 0, rtol 0 on ORT) unless stated.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from converter.feeds import seeded_feeds as make_feeds
from converter.graph_info import graph_inputs
from converter.ort_session import make_session, run_session
from converter.pass_api import PassContext
from converter.passes.fold_constants import FoldConstantsOptions, FoldConstantsPass

CTX = PassContext(log=logging.getLogger("test.fold_constants"))


def fold(model: onnx.ModelProto, **options):
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = FoldConstantsPass(FoldConstantsOptions(**options)).run(work, CTX)
    onnx.checker.check_model(result.model, full_check=True)
    return result


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def seeded_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return make_feeds(graph_inputs(model), seed=0)


def assert_same_on_ort(before: onnx.ModelProto, after: onnx.ModelProto, atol: float = 0.0) -> None:
    feeds = seeded_feeds(before)
    want = run_session(make_session(before), feeds)
    got = run_session(make_session(after), feeds)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=atol, err_msg=name)


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


CONSTANT_WEIGHTS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,4] y) {
  w = Constant<value = float[3,4] {1,2,3,4,5,6,7,8,9,10,11,12}>()
  b = Constant<value_floats = [0.5, -1, 2, 0.25]>()
  m = MatMul(x, w)
  y = Add(m, b)
}
"""


def test_constant_node_weights_become_initializers() -> None:
    model = parse(CONSTANT_WEIGHTS)
    result = fold(model)
    assert ops(result.model) == ["MatMul", "Add"]
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert inits["w"].shape == (3, 4) and inits["b"].dtype == np.float32
    assert result.facts["constant_nodes_converted"] == 2
    assert result.modified
    assert_same_on_ort(model, result.model)


def test_constant_nodes_option_off_keeps_unfolded_constants() -> None:
    result = fold(parse(CONSTANT_WEIGHTS), constant_nodes=False)
    assert ops(result.model) == ["Constant", "Constant", "MatMul", "Add"]
    assert not result.modified


def test_constant_of_shape_chain_folds_into_one_initializer() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) {
      shape = Constant<value = int64[2] {2, 3}>()
      half = ConstantOfShape<value = float[1] {0.5}>(shape)
      w = Constant<value = float[2,3] {1,2,3,4,5,6}>()
      scaled = Mul(half, w)
      y = Add(x, scaled)
    }
    """)
    result = fold(model)
    assert ops(result.model) == ["Add"]
    scaled = next(numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == "scaled")
    np.testing.assert_array_equal(scaled, np.arange(1, 7, dtype=np.float32).reshape(2, 3) * 0.5)
    assert result.facts["nodes_folded"] == 2 and result.facts["evaluator"] == "onnxruntime"
    assert {t.name for t in result.model.graph.initializer} == {"scaled"}  # inputs of folded nodes are gone
    assert_same_on_ort(model, result.model)


SHAPE_CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,4,4] x) => (float[1,48] y) {
  s = Shape(x)
  zero = Constant<value = int64 {0}>()
  n = Gather<axis = 0>(s, zero)
  axes = Constant<value = int64[1] {0}>()
  n1 = Unsqueeze(n, axes)
  minus1 = Constant<value = int64[1] {-1}>()
  target = Concat<axis = 0>(n1, minus1)
  y = Reshape(x, target)
}
"""


def test_shape_gather_chain_on_static_input_folds() -> None:
    model = parse(SHAPE_CHAIN)
    result = fold(model)
    assert ops(result.model) == ["Reshape"]
    target = next(numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == "target")
    np.testing.assert_array_equal(target, [1, -1])
    assert result.facts["shapes_folded"] == 4  # Shape, Gather, Unsqueeze and Concat, computed without running them
    assert_same_on_ort(model, result.model)


def test_fold_shapes_off_keeps_shape_arithmetic() -> None:
    result = fold(parse(SHAPE_CHAIN), fold_shapes=False)
    assert ops(result.model) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]


def test_reshape_by_the_dynamic_batch_of_its_own_input_gets_a_constant_shape() -> None:
    """``x.view(x.size(0), -1)`` with a dynamic batch: the batch is copied (0), nothing is baked in."""
    model = parse(SHAPE_CHAIN.replace("float[1,3,4,4] x", "float[N,3,4,4] x").replace("float[1,48] y", "float[N,48] y"))
    result = fold(model)
    assert ops(result.model) == ["Reshape"]
    shape = next(numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == result.model.graph.node[0].input[1])
    np.testing.assert_array_equal(shape, [0, -1])
    assert result.facts["rewrites"] == {"reshape_shape": 1}
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 4, 4)).astype(np.float32)
        np.testing.assert_array_equal(run_session(make_session(result.model), {"x": x})["y"], x.reshape(batch, 48))


def test_folding_goes_on_when_shape_inference_fails(monkeypatch) -> None:
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("inference failed")))
    model = parse(SHAPE_CHAIN)
    result = fold(model)  # the declared input shape is enough here
    assert ops(result.model) == ["Reshape"]
    assert_same_on_ort(model, result.model)


EXPAND_8MIB = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1024,1024,2] x) => (float[1024,1024,2] y) {
  one = Constant<value = float {1.5}>()
  shape = Constant<value = int64[3] {1024, 1024, 2}>()
  big = Expand(one, shape)
  y = Add(x, big)
}
"""


def test_size_limit_refuses_a_large_result_and_says_why() -> None:
    model = parse(EXPAND_8MIB)
    result = fold(model, size_limit_mib=1)
    assert ops(result.model) == ["Expand", "Add"]
    assert any("Expand" in r and "8.0 MiB > size_limit_mib=1" in r for r in result.refused), result.refused
    assert result.facts["nodes_folded"] == 0
    folded = fold(model)  # the default 64 MiB allows it
    assert ops(folded.model) == ["Add"] and folded.facts["bytes_materialized"] == 8 * 2**20


def test_size_limit_applies_to_results_whose_size_only_evaluation_knows() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[1,524288] x) => (int64[1,524288] y) {
      shape = Constant<value = int64[1] {524288}>()
      mask = ConstantOfShape<value = bool[1] {1}>(shape)
      idx = NonZero(mask)
      y = Add(x, idx)
    }
    """)
    result = fold(model, size_limit_mib=1)  # the mask is 0.5 MiB, NonZero's int64 result 4 MiB
    assert ops(result.model) == ["NonZero", "Add"]
    assert any(r.startswith("NonZero") and "4.0 MiB" in r for r in result.refused), result.refused
    assert [t.name for t in result.model.graph.initializer] == ["mask"]
    assert_same_on_ort(model, result.model)


QDQ_WEIGHTS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
  xs = Constant<value = float {0.02}>()
  xz = Constant<value = int8 {0}>()
  xq = QuantizeLinear(x, xs, xz)
  xd = DequantizeLinear(xq, xs, xz)
  ws = Constant<value = float[4] {0.01, 0.02, 0.01, 0.03}>()
  wz = Constant<value = int8[4] {0, 0, 0, 0}>()
  wd = DequantizeLinear<axis = 0>(w, ws, wz)
  h = Conv<pads = [1,1,1,1]>(xd, wd)
  vs = Constant<value = float {0.05}>()
  vz = Constant<value = int8 {0}>()
  vq = QuantizeLinear(v, vs, vz)
  vd = DequantizeLinear(vq, vs, vz)
  y = Conv<pads = [1,1,1,1]>(h, vd)
}
"""


def qdq_model() -> onnx.ModelProto:
    """A Q/DQ model: an int8 weight with DequantizeLinear, and a float weight quantized in the graph."""
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(QDQ_WEIGHTS)
    w = rng.integers(-127, 128, size=(4, 4, 3, 3)).astype(np.int8)
    v = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    model.graph.initializer.extend([numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v")])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_qdq_weight_pairs_are_never_folded() -> None:
    model = qdq_model()
    result = fold(model)
    assert ops(result.model) == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv", "QuantizeLinear", "DequantizeLinear", "Conv"]
    inits = {t.name: t for t in result.model.graph.initializer}
    assert inits["w"].data_type == onnx.TensorProto.INT8 and inits["v"].data_type == onnx.TensorProto.FLOAT
    assert result.facts["qdq_kept"] == 2  # DequantizeLinear(w) and QuantizeLinear(v): their inputs are constant
    assert any("quantized weights stay quantized" in r for r in result.refused)
    assert_same_on_ort(model, result.model)


def test_constant_graph_output_keeps_its_name() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y, float[2] k) {
      a = Constant<value = float[2] {1, 2}>()
      b = Constant<value = float[2] {3, 4}>()
      k = Add(a, b)
      y = Mul(x, k)
    }
    """)
    result = fold(model)
    assert [o.name for o in result.model.graph.output] == ["y", "k"]
    assert ops(result.model) == ["Identity", "Mul"]
    assert_same_on_ort(model, result.model)


def test_nondeterministic_nodes_and_ifs_reading_dynamic_values_are_not_folded() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y, float[2] z, float[2] w) {
      noise = RandomNormal<shape = [2], seed = 1.0>()
      y = Add(x, noise)
      cond = Constant<value = bool {1}>()
      branch = If(cond) <
        then_branch = t () => (float[2] o) { o = Constant<value = float[2] {1, 2}>() },
        else_branch = e () => (float[2] o) { o = Constant<value = float[2] {3, 4}>() }
      >
      z = Add(x, branch)
      reads_x = If(cond) <
        then_branch = t2 () => (float[2] o2) { o2 = Neg(x) },
        else_branch = e2 () => (float[2] o2) { o2 = Identity(x) }
      >
      w = Add(reads_x, branch)
    }
    """)
    result = fold(model)
    assert ops(result.model) == ["RandomNormal", "Add", "Add", "If", "Add"]  # the If on constants took its branch
    folded = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    np.testing.assert_array_equal(folded["branch"], [1, 2])
    assert_same_on_ort(model, result.model)


def test_loops_are_not_evaluated_ahead_of_time() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
      n = Constant<value = int64 {3}>()
      c = Constant<value = bool {1}>()
      s0 = Constant<value = float[2] {0, 0}>()
      s = Loop(n, c, s0) <body = b (int64 i, bool ci, float[2] si) => (bool co, float[2] so) {
        co = Identity(ci)
        one = Constant<value = float[2] {1, 1}>()
        so = Add(si, one)
      }>
      y = Add(x, s)
    }
    """)
    result = fold(model)
    assert ops(result.model) == ["Loop", "Add"]
    assert any("Loop" in r and "has subgraphs" in r for r in result.refused), result.refused


def test_graph_input_initializers_are_not_constants() -> None:
    """An initializer also listed as a graph input can be overridden at run time: never folded."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[2] w) => (float[2] y) {
      w2 = Neg(w)
      y = Add(x, w2)
    }
    """)
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 2], np.float32), "w"))
    result = fold(model)
    assert ops(result.model) == ["Neg", "Add"]


def test_onnx_reference_evaluates_what_onnx_runtime_cannot() -> None:
    """ONNX Runtime dropped opset-6 Add; onnx.reference still evaluates the constant subgraph."""
    from onnx.reference import ReferenceEvaluator

    model = parse("""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2] x) => (float[2] y) {
      a = Constant<value = float[2] {1, 2}>()
      b = Constant<value = float[2] {3, 4}>()
      c = Add(a, b)
      y = Add(x, c)
    }
    """)
    result = fold(model)
    assert ops(result.model) == ["Add"] and result.facts["evaluator"] == "onnx.reference"
    x = np.array([0.5, -1.0], np.float32)
    np.testing.assert_array_equal(ReferenceEvaluator(result.model).run(None, {"x": x})[0], x + np.array([4, 6], np.float32))


def test_a_constant_subgraph_nothing_can_evaluate_is_left_and_reported() -> None:
    """Reshape of 6 values into 4x4 fails in ONNX Runtime and in onnx.reference: nothing folds, the reason is kept."""
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4,4] x) => (float[4,4] y) {
      c = Constant<value = float[2,3] {1,2,3,4,5,6}>()
      s = Constant<value = int64[2] {4,4}>()
      d = Reshape(c, s)
      y = Add(x, d)
    }
    """)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = FoldConstantsPass(FoldConstantsOptions()).run(work, CTX)
    assert ops(result.model) == ["Reshape", "Add"]
    assert result.facts["nodes_folded"] == 0
    assert len(result.refused) == 1 and "ONNX Runtime" in result.refused[0] and "onnx.reference (ValueError" in result.refused[0]


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="size_limit_mib"):
        FoldConstantsOptions(size_limit_mib=0)


class _ExportedNet:
    """A small CNN exported by torch the way real exports look: Constant weights, shape arithmetic."""

    @staticmethod
    def build():
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
                self.bn = torch.nn.BatchNorm2d(8)
                self.fc = torch.nn.Linear(8 * 4 * 4, 10)

            def forward(self, x):
                h = torch.relu(self.bn(self.conv(x)))
                h = torch.nn.functional.adaptive_avg_pool2d(h, 4)
                h = h + torch.ones(h.shape[1:], dtype=h.dtype)  # ConstantOfShape-style constant
                return self.fc(h.view(x.size(0), -1))

        torch.manual_seed(0)
        net = Net().eval()
        with torch.no_grad():
            net.bn.running_mean.uniform_(-0.5, 0.5)
            net.bn.running_var.uniform_(0.5, 1.5)
        return net, torch.randn(1, 3, 16, 16)


def export_small_cnn(path) -> onnx.ModelProto:
    """Exported with the exporter's own constant folding off, as many shipped models are:
    Shape->Gather->Unsqueeze->Concat for ``view``, Constant nodes, ConstantOfShape for ``ones``."""
    import torch

    net, x = _ExportedNet.build()
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"], do_constant_folding=False)
    return onnx.load(str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice about the TorchScript exporter
def test_torch_exported_cnn_folds_and_stays_equal(tmp_path) -> None:
    model = export_small_cnn(tmp_path / "cnn.onnx")
    result = fold(model)
    assert "Shape" not in ops(result.model) and "Constant" not in ops(result.model)
    assert result.facts["nodes_folded"] > 0
    assert_same_on_ort(model, result.model, atol=1e-6)
