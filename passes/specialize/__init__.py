"""``specialize``: fix graph inputs to given values, fold what they decide, and inline the branch taken by every
``If`` whose condition becomes constant (nested Ifs too), e.g. a per-sample-rate model at one sample rate.

Public contract: the pass and its options.
"""

from converter.passes.specialize._pass import SpecializePass
from converter.passes.specialize._values import SpecializeOptions

__all__ = ["SpecializeOptions", "SpecializePass"]
