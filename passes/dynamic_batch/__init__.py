"""``dynamic_batch``: make the batch dim symbolic and rewrite every node that still holds the old batch.

Public contract: the pass, its options, its refusal error and the typed facts other passes
and backend lints read directly: :class:`Rewrite`, one per node it rewrote
(``PassResult.facts["rewritten"]``), and :class:`BatchAxis`, where each graph input and output
carries the batch (``PassResult.facts["axes"]``; state inputs found by analysis, none for
scalars and tables). Everything in ``_modules`` (the batch-flag analysis, its value algebra,
the per-op rules under ``rules/``) is private to this package.
"""

from converter.passes.dynamic_batch._facts import BatchAxis, Rewrite
from converter.passes.dynamic_batch._pass import BatchDependenceError, DynamicBatchOptions, DynamicBatchPass

__all__ = ["BatchAxis", "BatchDependenceError", "DynamicBatchOptions", "DynamicBatchPass", "Rewrite"]
