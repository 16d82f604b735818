"""simplify: onnxsim with options, Q/DQ weight protection, failure handling, and the real CLI.

Inputs are seeded (numpy default_rng(0)). Tolerance where fusions reorder float
math (BatchNormalization folded into Conv): atol 1e-5, rtol 1e-5; otherwise exact.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from converter.compare import Tolerance, compare
from converter.errors import UsageError
from converter.feeds import seeded_feeds as make_feeds
from converter.graph_info import graph_inputs
from converter.ort_session import make_session, run_session
from converter.pass_api import PassContext
from converter.pass_manager import build_passes, run_pipeline
from converter.passes.simplify import SimplifyFailed, SimplifyOptions, SimplifyPass
from converter.pipeline_text import parse_pipeline
from converter.plugin_manager import load_plugins

CTX = PassContext(log=logging.getLogger("test.simplify"))


def simplify(model: onnx.ModelProto, **options):
    work = onnx.ModelProto()
    work.CopyFrom(model)
    return SimplifyPass(SimplifyOptions(**options)).run(work, CTX)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def seeded_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return make_feeds(graph_inputs(model), seed=0)


def assert_same_on_ort(before: onnx.ModelProto, after: onnx.ModelProto, atol: float = 0.0, rtol: float = 0.0) -> None:
    feeds = seeded_feeds(before)
    want = run_session(make_session(before), feeds)
    got = run_session(make_session(after), feeds)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


CONV_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x, float[1,3,8,8] unused) => (float[1,4,8,8] y) {
  c = Conv<pads = [1,1,1,1]>(x, w, b)
  n = BatchNormalization(c, scale, bias, mean, var)
  y = Relu(n)
}
"""


def conv_bn_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(CONV_BN)
    tensors = {
        "w": rng.standard_normal((4, 3, 3, 3)),
        "b": rng.standard_normal(4),
        "scale": rng.uniform(0.5, 1.5, 4),
        "bias": rng.standard_normal(4),
        "mean": rng.standard_normal(4) * 0.1,
        "var": rng.uniform(0.5, 1.5, 4),
    }
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def test_fuses_batchnorm_and_keeps_the_interface() -> None:
    model = conv_bn_model()
    result = simplify(model)
    onnx.checker.check_model(result.model, full_check=True)
    assert ops(result.model) == ["Conv", "Relu"]
    assert [i.name for i in result.model.graph.input] == ["x", "unused"]  # the unused input stays
    assert result.facts["nodes_before"] == 3 and result.facts["nodes_after"] == 2
    assert result.modified
    assert_same_on_ort(model, result.model, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [{"skip_fuse_bn": True}, {"skip_fusions": True}, {"skipped_optimizers": ("fuse_bn_into_conv",)}, {"optimize": False}])
def test_fusion_options_keep_batchnorm(options) -> None:
    result = simplify(conv_bn_model(), **options)
    assert ops(result.model) == ["Conv", "BatchNormalization", "Relu"]
    skipped = result.facts["skipped_optimizers"]
    assert skipped == "all" if options == {"optimize": False} else "fuse_bn_into_conv" in skipped


def test_skip_fusions_names_every_fusion_it_skips() -> None:
    skipped = simplify(conv_bn_model(), skip_fusions=True).facts["skipped_optimizers"]
    assert {"fuse_bn_into_conv", "fuse_pad_into_conv", "fuse_matmul_add_bias_into_gemm"} <= set(skipped)
    assert all(name.startswith("fuse_") for name in skipped)


QDQ = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
  k = Constant<value = int8[4,4,1,1] {1,2,3,4, -1,-2,-3,-4, 5,6,7,8, -5,-6,-7,-8}>()
  xq = QuantizeLinear(x, xs, xz)
  xd = DequantizeLinear(xq, xs, xz)
  wd = DequantizeLinear<axis = 0>(w, ws, wz)
  h = Conv<pads = [1,1,1,1]>(xd, wd)
  kd = DequantizeLinear(k, ks, kz)
  y = Conv(h, kd)
}
"""


def qdq_model() -> onnx.ModelProto:
    """Per-channel int8 weight ``w`` in an initializer, per-tensor int8 weight ``k`` in a Constant node."""
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(QDQ)
    model.graph.initializer.extend([
        numpy_helper.from_array(rng.integers(-127, 128, size=(4, 4, 3, 3)).astype(np.int8), "w"),
        numpy_helper.from_array(np.array([0.01, 0.02, 0.01, 0.03], np.float32), "ws"),
        numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.int8), "xz"),
        numpy_helper.from_array(np.array(0.05, np.float32), "ks"),
        numpy_helper.from_array(np.array(0, np.int8), "kz"),
    ])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_weight_dequantize_linear_is_not_folded_into_float_weights() -> None:
    model = qdq_model()
    result = simplify(model)
    onnx.checker.check_model(result.model, full_check=True)
    inits = {t.name: t for t in result.model.graph.initializer}
    assert inits["w"].data_type == onnx.TensorProto.INT8 and inits["k"].data_type == onnx.TensorProto.INT8
    dq_inputs = [n.input[0] for n in result.model.graph.node if n.op_type == "DequantizeLinear"]
    assert {"w", "k"} <= set(dq_inputs)
    assert not any(t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == [4, 4, 3, 3] for t in inits.values())
    assert [i.name for i in result.model.graph.input] == ["x"]  # the hidden weights are initializers again
    assert result.facts["qdq_weights_protected"] == 2
    assert_same_on_ort(model, result.model)


def test_protection_leaves_no_trace_on_models_without_qdq() -> None:
    result = simplify(conv_bn_model())
    assert result.facts["qdq_weights_protected"] == 0


def malformed_model() -> onnx.ModelProto:
    """A weight whose raw data is shorter than its shape says: onnxsim raises on it."""
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) {
      d = Neg(w)
      y = Add(x, d)
    }
    """)
    model.graph.initializer.append(onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2, 3], raw_data=b"\0" * 8))
    return model


def test_onnxsim_failure_with_on_failure_skip_leaves_the_model_and_says_why() -> None:
    model = malformed_model()
    before = model.SerializeToString()
    result = simplify(model, on_failure="skip")
    assert not result.modified
    assert result.model.SerializeToString() == before
    assert len(result.refused) == 1 and "onnxsim raised RuntimeError" in result.refused[0] and "raw_data" in result.refused[0]
    assert "\n" not in result.refused[0]


def test_onnxsim_failure_with_on_failure_error_raises_one_line() -> None:
    with pytest.raises(RuntimeError, match="onnxsim raised RuntimeError") as info:
        simplify(malformed_model(), on_failure="error")
    assert isinstance(info.value, SimplifyFailed) and "\n" not in str(info.value)


def test_onnxsim_output_does_not_leak_to_the_terminal(capfd) -> None:
    simplify(malformed_model(), on_failure="skip")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[N,3] y) {
  y = Relu(x)
}
"""


def test_input_shapes_overwrite_dims() -> None:
    result = simplify(onnx.parser.parse_model(DYNAMIC), input_shapes=("x:2x3",))
    dims = [d.dim_value for d in result.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3]


def test_input_shapes_naming_no_input_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="'nope', which is not a model input"):
        simplify(onnx.parser.parse_model(DYNAMIC), input_shapes=("nope:2x3",))


def test_options_from_pipeline_text() -> None:
    registry = load_plugins(entry_points_enabled=False).passes
    (p,) = build_passes(parse_pipeline("simplify{input_shapes=[x:1x3x224x224,y:4],on_failure=skip,skipped_optimizers=fuse_bn_into_conv|fuse_pad_into_conv}"), registry)
    assert p.options.shape_overrides() == {"x": [1, 3, 224, 224], "y": [4]}
    assert p.options.on_failure == "skip" and p.options.skipped_optimizers == ("fuse_bn_into_conv", "fuse_pad_into_conv")
    with pytest.raises(UsageError, match="input_shapes"):
        build_passes(parse_pipeline("simplify{input_shapes=[x:1xA]}"), registry)


# ---------------------------------------------------------------- a real export, both passes, the CLI


def export_cnn(path) -> onnx.ModelProto:
    """A small CNN from torch: Conv+BN, a residual, global pooling, x.view(x.size(0), -1), Linear."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
            self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x):
            h = self.stem(x)
            h = torch.relu(h + self.block(h))
            h = h.mean(dim=(2, 3), keepdim=True)
            return self.fc(h.view(h.size(0), -1))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for bn in (net.stem[1], net.block[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"], do_constant_folding=False)
    return onnx.load(str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice about the TorchScript exporter
def test_torch_cnn_through_simplify_and_fold_constants_is_equal_on_ort(tmp_path) -> None:
    model = export_cnn(tmp_path / "cnn.onnx")
    registry = load_plugins(entry_points_enabled=False).passes
    passes = build_passes(parse_pipeline("simplify,fold_constants"), registry)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    out, report = run_pipeline(model, passes)
    onnx.checker.check_model(out, full_check=True)
    assert "BatchNormalization" not in ops(out) and "Constant" not in ops(out)
    assert report.records[0].nodes_after < report.records[0].nodes_before
    feeds = seeded_feeds(original)
    result = compare(run_session(make_session(out), feeds), run_session(make_session(original), feeds), Tolerance(atol=1e-5, rtol=1e-5, min_cosine=0.99999))
    assert result, result.table()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cli_runs_simplify_and_fold_constants_with_verify(tmp_path) -> None:
    model = tmp_path / "cnn.onnx"
    export_cnn(model)
    out = tmp_path / "cnn.ort.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "converter.cli", str(model), "-p", "simplify,fold_constants", "-b", "ort", "-o", str(out), "--verify"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert out.is_file()
    assert "simplify" in proc.stdout and "fold_constants" in proc.stdout


def test_unsorted_real_model_and_subgraphs_are_sorted_for_onnxsim(rapid_model) -> None:  # noqa: ANN001
    """ONNX Runtime runs graphs whose nodes are out of order; onnxsim refuses them. The pass sorts first."""
    model = onnx.load(str(rapid_model))
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(reversed(nodes))
    result = simplify(shuffled, on_failure="error")
    assert result.facts["graphs_sorted"] >= 1
    assert_same_on_ort(model, result.model, atol=1e-5)
    branch = onnx.parser.parse_graph("then_g () => (float[2] t) { t = Add(two, one)\n two = Add(one, one) }")
    other = onnx.parser.parse_graph("else_g () => (float[2] e) { e = Identity(one) }")
    with_if = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (bool c, float[2] x) => (float[2] y) <float[2] one = {1.0, 1.0}> { r = Relu(x) y = Add(r, z) z = Identity(r) }
    """)
    if_node = onnx.helper.make_node("If", ["c"], ["b"], then_branch=branch, else_branch=other)
    with_if.graph.node.insert(0, if_node)
    with_if.graph.output.append(onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2]))
    out = simplify(with_if, on_failure="error")
    feeds = {"c": np.array(True), "x": np.array([-1.0, 2.0], np.float32)}
    got = run_session(make_session(out.model), feeds)
    np.testing.assert_allclose(got["y"], [0.0, 4.0])
    np.testing.assert_allclose(got["b"], [3.0, 3.0])
