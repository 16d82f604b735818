"""Optimization profiles for TensorRT engines: parse, derive, validate. Pure Python, no TensorRT.

Shapes are written like trtexec's: ``x:1x3x224x224,mask:1x128``. Several profiles are
separated by ``;`` (``x:1x3x224x224;x:16x3x224x224``), the i-th min/opt/max belonging
together. ``batch=1..8..32`` is a shortcut for models whose only dynamic dim is dim 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from converter.backend_api import TensorSpec
from converter.errors import UsageError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputRange:
    min: Shape
    opt: Shape
    max: Shape

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


Profile = dict[str, InputRange]


def parse_shape_list(text: str, what: str) -> list[dict[str, Shape]]:
    """``x:1x3x224x224,m:1x8;x:...`` → one mapping per profile."""
    profiles: list[dict[str, Shape]] = []
    for chunk in text.split(";"):
        shapes: dict[str, Shape] = {}
        for item in filter(None, (p.strip() for p in chunk.split(","))):
            name, sep, dims = item.rpartition(":")
            if not sep or not name:
                raise UsageError(f"{what}: '{item}' must be name:DxDxD, e.g. x:1x3x224x224")
            try:
                shape = tuple(int(d) for d in dims.lower().split("x"))
            except ValueError:
                raise UsageError(f"{what}: '{item}': dimensions must be integers joined by 'x'") from None
            if any(d < 0 for d in shape):
                raise UsageError(f"{what}: '{item}': dimensions must be >= 0")
            if name in shapes:
                raise UsageError(f"{what}: input '{name}' given twice in one profile")
            shapes[name] = shape
        profiles.append(shapes)
    return profiles


def parse_batch(text: str) -> tuple[int, int, int]:
    """``1..8..32`` (min..opt..max), ``8`` (all three) or ``1..32`` (opt = max)."""
    try:
        parts = [int(p) for p in text.split("..")]
    except ValueError:
        raise UsageError(f"batch '{text}' must be MIN..OPT..MAX, e.g. 1..8..32") from None
    if len(parts) == 1:
        parts = parts * 3
    elif len(parts) == 2:
        parts = [parts[0], parts[1], parts[1]]
    if len(parts) != 3 or parts[0] < 1:
        raise UsageError(f"batch '{text}' must be MIN..OPT..MAX with MIN >= 1, e.g. 1..8..32")
    lo, opt, hi = parts
    if not lo <= opt <= hi:
        raise UsageError(f"batch '{text}': need min <= opt <= max")
    return lo, opt, hi


def dynamic_inputs(specs: Sequence[TensorSpec]) -> dict[str, list[int]]:
    """Input name → indices of its dims that are not fixed (symbolic or unknown)."""
    return {s.name: [i for i, d in enumerate(s.shape) if not (isinstance(d, int) and d > 0)] for s in specs if any(not (isinstance(d, int) and d > 0) for d in s.shape)}


def _from_batch(specs: Sequence[TensorSpec], batch: tuple[int, int, int]) -> Profile:
    dyn = dynamic_inputs(specs)
    not_batch = {n: dims for n, dims in dyn.items() if dims != [0]}
    if not_batch:
        name, dims = next(iter(not_batch.items()))
        raise UsageError(f"input '{name}' has dynamic dims {dims} besides the batch; give min_shapes/opt_shapes/max_shapes for it")
    profile: Profile = {}
    for s in specs:
        if s.name not in dyn:
            continue
        rest = tuple(int(d) for d in s.shape[1:])  # type: ignore[arg-type]
        profile[s.name] = InputRange((batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
    return profile


def _check_range(spec: TensorSpec, r: InputRange, index: int) -> None:
    where = f"profile {index}, input '{spec.name}'"
    for label, shape in (("min", r.min), ("opt", r.opt), ("max", r.max)):
        if len(shape) != len(spec.shape):
            raise UsageError(f"{where}: {label} shape {list(shape)} has rank {len(shape)}, the model's input has rank {len(spec.shape)} {list(spec.shape)}")
        for i, (want, got) in enumerate(zip(spec.shape, shape)):
            if isinstance(want, int) and want > 0 and got != want:
                raise UsageError(f"{where}: {label} dim {i} is {got} but the model fixes it to {want}")
    for i, (lo, opt, hi) in enumerate(zip(r.min, r.opt, r.max)):
        if not lo <= opt <= hi:
            raise UsageError(f"{where}: dim {i} needs min <= opt <= max, got {lo}, {opt}, {hi}")


def build_profiles(
    specs: Sequence[TensorSpec],
    *,
    min_shapes: str | None = None,
    opt_shapes: str | None = None,
    max_shapes: str | None = None,
    batch: str | None = None,
) -> list[Profile]:
    """Optimization profiles for ``specs``; an empty list when every input is static."""
    dyn = dynamic_inputs(specs)
    given = [t for t in (min_shapes, opt_shapes, max_shapes) if t]
    if not given:
        if not dyn:
            return []
        return [_from_batch(specs, parse_batch(batch or "1..8..32"))]
    if len(given) != 3:
        raise UsageError("give min_shapes, opt_shapes and max_shapes together (or only batch=MIN..OPT..MAX)")
    mins, opts, maxs = (parse_shape_list(t, n) for t, n in ((min_shapes, "min_shapes"), (opt_shapes, "opt_shapes"), (max_shapes, "max_shapes")))  # type: ignore[arg-type]
    if not len(mins) == len(opts) == len(maxs):
        raise UsageError(f"min_shapes, opt_shapes and max_shapes give {len(mins)}, {len(opts)} and {len(maxs)} profiles; they must match")
    by_name = {s.name: s for s in specs}
    profiles: list[Profile] = []
    for index, (mn, op, mx) in enumerate(zip(mins, opts, maxs)):
        names = set(mn) | set(op) | set(mx)
        unknown = sorted(names - set(by_name))
        if unknown:
            raise UsageError(f"profile {index}: '{unknown[0]}' is not an input of the model (inputs: {', '.join(by_name)})")
        for n in names:
            if not (n in mn and n in op and n in mx):
                raise UsageError(f"profile {index}: input '{n}' needs a min, an opt and a max shape")
        missing = [n for n in dyn if n not in names]
        if missing:
            raise UsageError(f"profile {index}: dynamic input '{missing[0]}' {list(by_name[missing[0]].shape)} has no shapes; every dynamic input must be covered")
        profile: Profile = {}
        for n in sorted(names, key=list(by_name).index):
            r = InputRange(mn[n], op[n], mx[n])
            _check_range(by_name[n], r, index)
            profile[n] = r
        profiles.append(profile)
    return profiles


def select_profile(profiles: Sequence[Mapping[str, InputRange]], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the first profile whose ranges hold ``shapes``; -1 when none does."""
    for i, profile in enumerate(profiles):
        if all(name not in profile or profile[name].contains(shape) for name, shape in shapes.items()):
            return i
    return -1


def profiles_to_json(profiles: Sequence[Mapping[str, InputRange]]) -> list[dict[str, dict[str, list[int]]]]:
    return [{n: r.to_json() for n, r in p.items()} for p in profiles]


def profiles_from_json(data: Sequence[Mapping[str, Mapping[str, Sequence[int]]]]) -> list[Profile]:
    return [{n: InputRange(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for n, r in p.items()} for p in data]
