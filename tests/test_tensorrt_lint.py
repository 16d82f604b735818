"""The TensorRT-compatibility lint: the linter itself, then each Q/DQ rule on a tiny model that triggers it
and one that does not (graph and type rules: test_tensorrt_lint_graph.py; real models: test_tensorrt_lint_real.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converter.plugins.tensorrt.lint import RULES, lint, parse_trt_version
from tests.trt_lint_models import H17, H21, conv_weights_dq, found, parse

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
