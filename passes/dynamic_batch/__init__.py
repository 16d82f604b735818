"""``dynamic_batch``: make the batch dim symbolic and rewrite every node that still holds the old batch.

Public contract: the pass, its options, its refusal error and :class:`Rewrite`, the typed
fact it reports for each node it rewrote (``PassResult.facts["rewritten"]``), which other
passes and backend lints read directly. Everything in ``_modules`` (the batch-flag analysis,
its value algebra, the per-op rules under ``rules/``) is private to this package.
"""

from converter.passes.dynamic_batch._analysis import Rewrite
from converter.passes.dynamic_batch._pass import BatchDependenceError, DynamicBatchOptions, DynamicBatchPass

__all__ = ["BatchDependenceError", "DynamicBatchOptions", "DynamicBatchPass", "Rewrite"]
