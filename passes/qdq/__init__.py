"""``qdq``: symmetric int8 QuantizeLinear/DequantizeLinear from calibrated ranges.

Public contract: the pass and its options. Calibration settings, placement rules, the
weight quantizer, insertion and the QAT checks are private modules of this package.
"""

from converter.passes.qdq._pass import MIN_OPSET, QdqOptions, QdqPass

__all__ = ["MIN_OPSET", "QdqOptions", "QdqPass"]
