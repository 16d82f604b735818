"""Per-op rules of the dynamic_batch analysis: how each op carries the batch, what it must rewrite.

``all_rules()`` maps op types to rules; ``fallback`` handles ops without one.
"""

from converter.passes.dynamic_batch.rules._general import all_rules, fallback

__all__ = ["all_rules", "fallback"]
