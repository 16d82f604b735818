"""``fp16``: float16 with the I/O kept, an op block list with reasons, out-of-range constants kept in float.

Public contract: the pass and its options; the policy (what stays float and why) and the
rewriter are private modules of this package.
"""

from converter.passes.fp16._pass import Fp16Options, Fp16Pass

__all__ = ["Fp16Options", "Fp16Pass"]
