"""TensorRT-compatibility lint: what TensorRT's ONNX parser will reject or run slowly, found without TensorRT.

Public contract: :func:`lint`, the rule table :data:`RULES` and :class:`Rule`, and
:func:`parse_trt_version`. The rules and the op tables behind them are private modules.
"""

from converter.plugins.tensorrt.lint._context import parse_trt_version
from converter.plugins.tensorrt.lint._rules import RULES, Rule, lint

__all__ = ["RULES", "Rule", "lint", "parse_trt_version"]
