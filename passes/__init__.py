"""Built-in passes, registered through the same hooks third-party plugins use.

Adding a built-in pass: a module here (or a package, when it needs more than one module,
whose ``__init__`` is its public contract) and one ``registry.add`` line below. A pass that
needs a value from the command line declares a :class:`~converter.flags.PassInput` and adds
it in ``converter_add_options``; nothing in ``converter/`` changes.
"""

from __future__ import annotations

from collections.abc import Callable

from converter.api.objects import get_pass
from converter.calibration import CALIB_DATA, CALIB_RANDOM, RAY
from converter.flags import OptionRegistry
from converter.hookspecs import hookimpl
from converter.pass_api import Pass
from converter.passes.cleanup import CleanupPass
from converter.passes.dynamic_batch import DynamicBatchPass
from converter.passes.equalize import EqualizePass
from converter.passes.fold_constants import FoldConstantsPass
from converter.passes.fp16 import Fp16Pass
from converter.passes.infer_shapes import InferShapesPass
from converter.passes.opset import OpsetPass
from converter.passes.qdq import QdqPass
from converter.passes.simplify import SimplifyPass
from converter.passes.smooth_quant import SmoothQuantPass
from converter.passes.specialize import SpecializePass
from converter.registry import PassRegistry


@hookimpl
def converter_register_passes(registry: PassRegistry) -> None:
    registry.add(InferShapesPass)
    registry.add(OpsetPass)
    registry.add(CleanupPass)
    registry.add(DynamicBatchPass)
    registry.add(SimplifyPass)
    registry.add(FoldConstantsPass)
    registry.add(SmoothQuantPass)
    registry.add(EqualizePass)
    registry.add(QdqPass)
    registry.add(Fp16Pass)
    registry.add(SpecializePass)


@hookimpl
def converter_add_options(registry: OptionRegistry) -> None:
    registry.add_pass_input(CALIB_DATA)  # read by qdq and smooth_quant
    registry.add_pass_input(CALIB_RANDOM)
    registry.add_pass_input(RAY)  # read by qdq


def get(name: str) -> Callable[..., Pass]:
    """The pass registered as ``name`` (built-in or a plugin's), as a factory taking its options as keyword arguments:
    ``converter.passes.get("qdq")(calibrator="entropy")``. Unknown names and options are UsageErrors."""
    return get_pass(name)
