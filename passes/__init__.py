"""Built-in passes, registered through the same hook third-party plugins use."""

from __future__ import annotations

from converter.hookspecs import hookimpl
from converter.registry import PassRegistry


@hookimpl
def converter_register_passes(registry: PassRegistry) -> None:
    from converter.passes.cleanup import CleanupPass
    from converter.passes.dynamic_batch import DynamicBatchPass
    from converter.passes.fold_constants import FoldConstantsPass
    from converter.passes.fp16 import Fp16Pass
    from converter.passes.infer_shapes import InferShapesPass
    from converter.passes.qdq import QdqPass
    from converter.passes.simplify import SimplifyPass

    registry.add(InferShapesPass)
    registry.add(CleanupPass)
    registry.add(DynamicBatchPass)
    registry.add(SimplifyPass)
    registry.add(FoldConstantsPass)
    registry.add(QdqPass)
    registry.add(Fp16Pass)
