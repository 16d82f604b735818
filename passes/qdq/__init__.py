"""``qdq``: symmetric int8 QuantizeLinear/DequantizeLinear from calibrated ranges.

Public contract: the pass and its options, and how calibration lays out the data (``calibration_layout``, shared
with ``smooth_quant``). Calibration settings, placement rules, the
weight quantizer, insertion and the QAT checks are private modules of this package.
"""

from converter.passes.qdq._layout import Layout, calibration_layout
from converter.passes.qdq._pass import MIN_OPSET, QdqOptions, QdqPass
from converter.passes.qdq._ranges import ACTIVATION_RANGES
from converter.passes.qdq._ranges import read as read_activation_ranges

__all__ = ["ACTIVATION_RANGES", "MIN_OPSET", "Layout", "QdqOptions", "QdqPass", "calibration_layout", "read_activation_ranges"]
