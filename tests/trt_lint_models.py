"""What the TensorRT lint tests share: ONNX-text headers, a parser, the findings of one rule, and
Conv weights dequantized per channel (a Q/DQ rule's model, and constant weights for another)."""

from __future__ import annotations

import onnx
import onnx.parser

from converter.plugins.tensorrt.lint import lint

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
