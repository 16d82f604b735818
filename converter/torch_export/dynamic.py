"""Dynamic axes of an export: ``--dynamic NAME:AXIS=SYMBOL[,AXIS=SYMBOL...]`` and the sizes it is traced and checked at.

Without ``--dynamic`` dim 0 of every input is ``batch``; with it, the flags state every dynamic axis
(an input not named is static). The same SYMBOL on several inputs means the same size
(``ids:0=batch,1=seq`` and ``mask:0=batch,1=seq``). ``--static`` makes no axis dynamic.

Sizes, per symbol:

- given: the size ``--input`` writes on its axes (one value: inputs sharing a symbol agree);
- traced: the given size, at least 2 (torch.export specializes sizes 0 and 1, pinning the axis);
- checked: ``--batches`` for ``batch`` (default 1,4), the given size and size+3 for the others,
  or ``--sizes SYMBOL=A,B,...``. The check runs one point per position: point i takes the i-th
  size of every symbol (a shorter list starts over), so each symbol is seen at each of its sizes.

No torch here: all of this is checked before torch is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from converter.errors import UsageError
from converter.torch_export.inputs import InputSpec

BATCH = "batch"
DEFAULT_BATCHES = (1, 4)
OTHER_STEP = 3  # the second checked size of a non-batch symbol: the given size + 3
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SYNTAX = "NAME:AXIS=SYMBOL[,AXIS=SYMBOL...], e.g. ids:0=batch,1=seq"
SIZES_SYNTAX = "SYMBOL=A,B[,...], e.g. seq=8,17"


@dataclass(frozen=True)
class DynamicAxes:
    """input name → {axis: symbol}, axes non-negative; ``flags`` are the ``--dynamic`` texts (empty: the default)."""

    axes: dict[str, dict[int, str]] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    @property
    def symbols(self) -> list[str]:
        return list(dict.fromkeys(s for per in self.axes.values() for s in per.values()))

    @property
    def is_default_batch(self) -> bool:
        return not self.flags and bool(self.axes)

    def shape(self, spec: InputSpec, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """``spec``'s shape with each dynamic axis at its symbol's size (a symbol missing from ``sizes``: as given)."""
        per = self.axes.get(spec.name, {})
        return tuple(sizes.get(per[a], d) if a in per else d for a, d in enumerate(spec.shape))

    def shapes(self, specs: Sequence[InputSpec], sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        return {s.name: self.shape(s, sizes) for s in specs}

    def text(self) -> str:
        return ", ".join(f"{name}[{','.join(f'{a}={s}' for a, s in per.items())}]" for name, per in self.axes.items())

    def to_json(self) -> dict[str, dict[str, str]]:
        return {name: {str(a): s for a, s in per.items()} for name, per in self.axes.items()}


def default_axes(specs: Sequence[InputSpec], static: bool) -> DynamicAxes:
    """No ``--dynamic``: dim 0 of every input is ``batch`` (``--static``: nothing is dynamic)."""
    return DynamicAxes() if static else DynamicAxes({s.name: {0: BATCH} for s in specs})


def _parse_one(item: str, specs: dict[str, InputSpec]) -> tuple[str, dict[int, str]]:
    name, sep, rest = item.partition(":")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise UsageError(f"--dynamic '{item}' must be written {SYNTAX}")
    spec = specs.get(name)
    if spec is None:
        raise UsageError(f"--dynamic '{item}': no --input is named '{name}' (inputs: {', '.join(specs)})")
    rank = len(spec.shape)
    per: dict[int, str] = {}
    for part in rest.split(","):
        axis_text, eq, symbol = (t.strip() for t in part.partition("="))
        if not eq or not axis_text or not symbol:
            raise UsageError(f"--dynamic '{item}': '{part.strip()}' must be AXIS=SYMBOL; write {SYNTAX}")
        try:
            axis = int(axis_text)
        except ValueError:
            raise UsageError(f"--dynamic '{item}': axis '{axis_text}' is not an integer; write {SYNTAX}") from None
        if not -rank <= axis < rank:
            raise UsageError(f"--dynamic '{item}': axis {axis} is out of range for {name}, which has rank {rank} (axes 0..{rank - 1})")
        axis %= rank
        if not _SYMBOL.match(symbol):
            raise UsageError(f"--dynamic '{item}': symbol '{symbol}' is not an identifier (letters, digits and '_', not starting with a digit)")
        if axis in per:
            raise UsageError(f"--dynamic '{item}': axis {axis} is given twice")
        per[axis] = symbol
    return name, dict(sorted(per.items()))


def parse_dynamic(items: Sequence[str], specs: Sequence[InputSpec], static: bool) -> DynamicAxes:
    """The ``--dynamic`` flags (none: the default batch), checked against the ``--input`` specs."""
    if not items:
        return default_axes(specs, static)
    if static:
        raise UsageError("--static keeps every shape and --dynamic makes axes dynamic; give one or the other")
    by_name = {s.name: s for s in specs}
    axes: dict[str, dict[int, str]] = {}
    flag_of: dict[str, str] = {}
    for item in items:
        name, per = _parse_one(item, by_name)
        if name in axes:
            raise UsageError(f"--dynamic '{item}': input '{name}' is already given by --dynamic '{flag_of[name]}'; one flag per input")
        axes[name], flag_of[name] = per, item
    ordered = {s.name: axes[s.name] for s in specs if s.name in axes}  # forward()'s order
    dyn = DynamicAxes(ordered, tuple(items))
    given_sizes(dyn, specs, flag_of)  # the sizes of a shared symbol agree
    return dyn


def given_sizes(dyn: DynamicAxes, specs: Sequence[InputSpec], flag_of: Mapping[str, str] | None = None) -> dict[str, int]:
    """Each symbol's size in the ``--input`` shapes; a symbol whose axes disagree is a usage error."""
    sizes: dict[str, int] = {}
    where: dict[str, str] = {}
    for spec in specs:
        for axis, symbol in dyn.axes.get(spec.name, {}).items():
            size, here = spec.shape[axis], f"axis {axis} of {spec.name} is {spec.shape[axis]}"
            if symbol in sizes and sizes[symbol] != size:
                flag = f"--dynamic '{flag_of[spec.name]}'" if flag_of else "--dynamic"
                raise UsageError(f"{flag}: '{symbol}' names one size, but in --input {where[symbol]} and {here}; give them the same size")
            sizes.setdefault(symbol, size)
            where.setdefault(symbol, here)
    return sizes


def trace_sizes(given: Mapping[str, int]) -> dict[str, int]:
    """The sizes to trace at: at least 2 (torch.export specializes 0 and 1)."""
    return {s: max(2, n) for s, n in given.items()}


def parse_sizes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        symbol, eq, values = (t.strip() for t in item.partition("="))
        if not eq or not _SYMBOL.match(symbol) or not values:
            raise UsageError(f"--sizes '{item}' must be written {SIZES_SYNTAX}")
        try:
            sizes = tuple(int(v) for v in values.split(","))
        except ValueError:
            raise UsageError(f"--sizes '{item}': sizes must be integers separated by commas, e.g. {SIZES_SYNTAX}") from None
        if any(v <= 0 for v in sizes):
            raise UsageError(f"--sizes '{item}': sizes must be positive")
        if symbol in out:
            raise UsageError(f"--sizes '{item}': '{symbol}' is given twice")
        out[symbol] = sizes
    return out


def check_sizes(dyn: DynamicAxes, given: Mapping[str, int], batches: tuple[int, ...], sizes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The sizes each symbol is checked at (``batches`` is ``--batches``, ``sizes`` ``--sizes``)."""
    symbols = dyn.symbols
    if not symbols:
        if batches != DEFAULT_BATCHES:
            raise UsageError("--batches applies to a dynamic batch; a --static export is checked at the shapes given by --input")
        if sizes:
            raise UsageError("--sizes applies to dynamic axes; a --static export is checked at the shapes given by --input")
        return {}
    unknown = [s for s in sizes if s not in symbols]
    if unknown:
        raise UsageError(f"--sizes names '{unknown[0]}', which is no dynamic axis (symbols: {', '.join(symbols)})")
    if batches != DEFAULT_BATCHES:
        if BATCH not in symbols:
            raise UsageError(f"--batches sets the sizes of 'batch', which --dynamic does not name; use --sizes SYMBOL=A,B (symbols: {', '.join(symbols)})")
        if BATCH in sizes:
            raise UsageError("--batches and --sizes batch=... both set the batch sizes; give one")
    if any(b <= 0 for b in batches):
        raise UsageError("--batches must be positive integers, e.g. 1,4")
    out: dict[str, tuple[int, ...]] = {}
    for s in symbols:
        if s in sizes:
            out[s] = sizes[s]
        elif s == BATCH:
            out[s] = batches
        else:
            out[s] = (given[s], given[s] + OTHER_STEP)
    return out


def check_points(checked: Mapping[str, tuple[int, ...]]) -> list[dict[str, int]]:
    """Point i takes the i-th size of each symbol (shorter lists start over); no symbols: one point, the shapes as given."""
    count = max((len(v) for v in checked.values()), default=1)
    return [{s: v[i % len(v)] for s, v in checked.items()} for i in range(count)]


def sizes_text(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{s} {n}" for s, n in sizes.items())


def to_json(checked: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    return {s: list(v) for s, v in checked.items()}
