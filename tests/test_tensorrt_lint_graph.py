"""The TensorRT-compatibility lint's graph and type rules (types, operators, shapes, versions), each on a tiny
model that triggers it and one that does not."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto, numpy_helper

from tests.trt_lint_models import H17, conv_weights_dq, found, parse

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
