"""How calibration feeds a model: each input's sample axis, the batch, and the model copy to run.

Shared by the passes that calibrate (``qdq``, ``smooth_quant``): dynamic_batch's analysis, run once
on a copy, gives each input's sample axis (a recurrent state's axis 1; none for scalars, fed
unchanged to every run); declared axes (``?axes=``) override it. A model with a static batch of 1
is calibrated in batches on the copy the pass made dynamic; where that pass refuses, one sample
at a time (or exactly its static batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from converter.errors import ConverterError
from converter.graph_info import graph_inputs
from converter.pass_api import PassContext


@dataclass(frozen=True)
class Layout:
    """The model to calibrate on, each input's sample axis, the batch to feed and whether it is exact."""

    model: onnx.ModelProto
    axes: dict[str, int | None]
    batch: int
    exact: bool


def fallback_axes(model: onnx.ModelProto, declared: dict[str, int | None]) -> dict[str, int | None]:
    """Without the analysis: axis 0 for inputs with dims, none for scalars; ``declared`` wins."""
    return {spec.name: declared.get(spec.name, 0 if spec.shape else None) for spec in graph_inputs(model)}


def static_batch(model: onnx.ModelProto, axes: dict[str, int | None]) -> set[int | None]:
    """Each batched input's size along its own sample axis (None where symbolic)."""
    dims: set[int | None] = set()
    for spec in graph_inputs(model):
        axis = axes.get(spec.name, 0)
        if axis is None or axis >= len(spec.shape):
            continue
        d = spec.shape[axis]
        dims.add(d if isinstance(d, int) and d > 0 else None)
    return dims


def calibration_layout(model: onnx.ModelProto, batch_size: int, tensors: list[str], declared: dict[str, int | None], ctx: PassContext) -> Layout:
    """The per-input sample axes (dynamic_batch's analysis, once, on a copy) and the model and batch to calibrate with.

    An already-dynamic model keeps its symbolic dims; a static batch-1 model is calibrated in batches
    on the copy the pass made dynamic; otherwise (a static batch, or a refusal) with exactly its batch,
    each input cut along its own axis (a state keeps ``[layers, 1, hidden]``).
    """
    from converter.passes.dynamic_batch import DynamicBatchOptions, DynamicBatchPass

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    options = DynamicBatchOptions(verify=False, axes=tuple(f"{n}:{'none' if a is None else a}" for n, a in declared.items()))
    try:
        result = DynamicBatchPass(options).run(copy, PassContext(log=ctx.log.getChild("dynamic_batch"), seed=ctx.seed))
    except ConverterError as exc:
        axes = fallback_axes(model, declared)
        static = {d for d in static_batch(model, axes) if d is not None}
        fixed = max(static, default=1)
        what = "one sample at a time" if fixed == 1 else f"in batches of exactly {fixed}"
        ctx.log.info("calibrating %s: dynamic_batch refused this model (%s)", what, exc)
        return Layout(model, axes, fixed, True)
    found = {a.tensor: a.axis for a in result.facts.get("axes", []) if a.role == "input"}
    axes = {**fallback_axes(model, declared), **found, **declared}
    dims = static_batch(model, axes)
    static = {d for d in dims if d is not None}
    if not static:
        return Layout(model, axes, batch_size, False)
    fixed = max(static)
    if fixed != 1 or batch_size == 1 or None in dims or "already_dynamic" in result.facts:
        return Layout(model, axes, fixed, True)
    produced = {o for n in result.model.graph.node for o in n.output} | {vi.name for vi in result.model.graph.input}
    if not all(t in produced for t in tensors):
        ctx.log.info("calibrating one sample at a time: dynamic_batch renamed tensors to calibrate")
        return Layout(model, axes, 1, True)
    ctx.log.info("calibrating in batches of %d on a copy made dynamic by dynamic_batch", batch_size)
    return Layout(result.model, axes, batch_size, False)
