"""Which graph inputs seed the batch and at which dim: options, defaults, and models whose batch is already dynamic.

The *main* input is the first input with dims (or the first of ``inputs=``); its dim 0 (or
the dim ``axes=`` names) is the exported batch. Other inputs whose dim 0 has that size are
guessed batched at dim 0 (a guess the analysis may move, e.g. a one-layer LSTM state
``[1, 1, hidden]``); every other input starts without a batch and gets one only where the
analysis follows the batch to it (:mod:`._trace`). Scalars and tables meet no batch and
are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from converter.errors import UsageError
from converter.options import parse_axis_entries
from converter.passes.dynamic_batch._facts import BatchDependenceError
from converter.passes.dynamic_batch._trace import Seed

Dim = int | str | None


def parse_axes(entries: tuple[str, ...]) -> dict[str, int | None]:
    """``("state:1", "sr:none")`` → ``{"state": 1, "sr": None}``; ValueError on anything else."""
    return parse_axis_entries(entries)


def dims_of(vi: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    """Static sizes, dim_params, or None for unknown dims; () for a scalar or an input without a shape."""
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        return ()
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None) for d in t.shape.dim)


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


@dataclass
class Plan:
    """Where the analysis starts: each seeded input, the exported batch, and the input the run-time batch is read from."""

    seeds: dict[str, Seed]
    old: int
    lead: str
    lead_axis: int


def _check_names(real: list[onnx.ValueInfoProto], inputs: tuple[str, ...], axes: Mapping[str, int | None]) -> None:
    names = {vi.name for vi in real}
    for option, given in (("inputs", inputs), ("axes", tuple(axes))):
        unknown = [w for w in given if w not in names]
        if unknown:
            raise UsageError(f"{option}: '{unknown[0]}' is not an input of the model (inputs: {', '.join(sorted(names))})")
    both = [n for n in inputs if n in axes and axes[n] is None]
    if both:
        raise UsageError(f"input '{both[0]}' is in inputs=[...] but axes says it has no batch ({both[0]}:none)")


def _axis_of(vi: onnx.ValueInfoProto, axes: Mapping[str, int | None]) -> int:
    dims, axis = dims_of(vi), axes.get(vi.name) or 0
    if not dims:
        raise UsageError(f"input '{vi.name}' has no dims, so it has no batch dim; name the batched inputs with inputs=[...] or axes=[...]")
    if axis >= len(dims):
        raise UsageError(f"axes: input '{vi.name}' has {len(dims)} dims, so it has no dim {axis}")
    return axis


def _explicit(real: list[onnx.ValueInfoProto], inputs: tuple[str, ...], axes: Mapping[str, int | None]) -> list[tuple[onnx.ValueInfoProto, int]]:
    """The inputs ``inputs=`` and ``axes=`` batch, with their dims, in the model's order."""
    return [(vi, _axis_of(vi, axes)) for vi in real if vi.name in inputs or axes.get(vi.name) is not None]


def _lead(real: list[onnx.ValueInfoProto], inputs: tuple[str, ...], axes: Mapping[str, int | None]) -> tuple[onnx.ValueInfoProto, int]:
    _check_names(real, inputs, axes)
    if inputs:
        vi = next(vi for vi in real if vi.name in inputs)
        return vi, _axis_of(vi, axes)
    for vi in real:
        if dims_of(vi) and (vi.name not in axes or axes[vi.name] is not None):
            return vi, _axis_of(vi, axes)
    raise UsageError("the model has no input with dims to carry a batch; name the batched inputs with inputs=[...]")


def dynamic_inputs(model: onnx.ModelProto, inputs: tuple[str, ...], axes: Mapping[str, int | None]) -> dict[str, tuple[int, str | None]]:
    """``{input: (dim, dim_param or None)}`` of the symbolic batch dims when the main input's batch is not static, else {}."""
    real = real_inputs(model)
    lead, axis = _lead(real, inputs, axes)
    param = dims_of(lead)[axis]
    explicit = _explicit(real, inputs, axes)
    symbolic = {vi.name: (ax, dims_of(vi)[ax]) for vi, ax in explicit if not isinstance(dims_of(vi)[ax], int)}
    if isinstance(param, int):
        if symbolic:
            listed = ", ".join(f"{vi.name} has dim {ax} {dims_of(vi)[ax] or '?'}" for vi, ax in explicit)
            raise BatchDependenceError(f"inputs disagree: {listed}; name the inputs to make dynamic with inputs=[...]")
        return {}
    out: dict[str, tuple[int, str | None]] = {lead.name: (axis, param)}
    for vi in real:
        dims = dims_of(vi)
        if vi.name in out or axes.get(vi.name, 0) is None or not dims:
            continue
        if vi.name in symbolic:
            out[vi.name] = symbolic[vi.name]
        elif not inputs:  # the same dim_param (or, where dims have no names, the first unknown dim)
            j = next((j for j, d in enumerate(dims) if (d == param if param else d is None or isinstance(d, str))), None)
            if j is not None:
                out[vi.name] = (j, dims[j])  # type: ignore[assignment]
    return out


def plan_seeds(model: onnx.ModelProto, inputs: tuple[str, ...], axes: Mapping[str, int | None], dim: int | None) -> Plan:
    """Seeds of a model whose main input has a static batch (``dim`` overrides its size)."""
    real = real_inputs(model)
    lead, lead_axis = _lead(real, inputs, axes)
    size = dims_of(lead)[lead_axis]
    old = dim if dim is not None else int(size)  # type: ignore[arg-type]
    seeds: dict[str, Seed] = {}
    for vi, ax in _explicit(real, inputs, axes):
        seeds[vi.name] = Seed(ax, "option")
    for vi in real:
        dims = dims_of(vi)
        if vi.name in seeds:
            continue
        if vi.name in axes:  # name:none
            seeds[vi.name] = Seed(None, "option")
        elif vi.name == lead.name:
            seeds[vi.name] = Seed(lead_axis, "main")
        elif not inputs and dims and dims[0] == old:
            seeds[vi.name] = Seed(0, "main", movable=True)
    by_name = {vi.name: vi for vi in real}
    wrong = [f"{n} has {dims_of(by_name[n])[s.axis] or '?'} in dim {s.axis}" for n, s in seeds.items() if s.axis is not None and dims_of(by_name[n])[s.axis] != old]
    if wrong:
        raise BatchDependenceError(f"inputs disagree on the batch {old} ({', '.join(wrong)}); name the batched inputs with inputs=[...] or axes=[name:dim], or set dim=")
    return Plan(seeds, old, lead.name, lead_axis)


def pin(model: onnx.ModelProto, dims: Mapping[str, tuple[int, int | str | None]]) -> None:
    """Set input ``name``'s dim ``axis`` to ``value``: a size (int) or a dim_param (str; None clears it)."""
    for vi in model.graph.input:
        if vi.name in dims:
            axis, value = dims[vi.name]
            d = vi.type.tensor_type.shape.dim[axis]
            d.Clear()
            if isinstance(value, int):
                d.dim_value = value
            elif value:
                d.dim_param = value
