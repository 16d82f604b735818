"""Model inputs for an export: ``--input name:shape:dtype[:low..high]`` and seeded sample data.

``x:1x3x224x224:float32``, ``ids:1x16:int64:0..999``, ``mask:1x16:int64:0..1``. The order of the
``--input`` flags is the order of ``forward()``'s positional arguments. With a dynamic batch
(the default) dim 0 of every input is the batch: the value written is the batch of the sample
(``--dynamic``, in dynamic.py, names other dynamic axes; the value written is their sample size).

Sample data is seeded: floats ~ N(0, 1) (or uniform in ``low..high``), integers uniform in
``low..high`` inclusive (default ``0..1``, right for masks, valid ids for any vocabulary),
booleans at random.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from converter.errors import UsageError

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
SYNTAX = "name:shape:dtype[:low..high], e.g. x:1x3x224x224:float32 or ids:1x16:int64:0..999"


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None


def _number(text: str, item: str, integer: bool) -> float:
    try:
        return float(int(text)) if integer else float(text)
    except ValueError:
        raise UsageError(f"--input '{item}': range bound '{text}' is not {'an integer' if integer else 'a number'}; write {SYNTAX}") from None


def parse_input(item: str) -> InputSpec:
    parts = item.split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise UsageError(f"--input '{item}' must be written {SYNTAX}")
    name, dims = parts[0].strip(), parts[1].strip().lower()
    dtype = parts[2].strip().lower() if len(parts) > 2 and parts[2].strip() else "float32"
    if not _NAME.match(name):
        raise UsageError(f"--input '{item}': '{name}' is not a valid input name (letters, digits, '_' and '.', not starting with a digit)")
    try:
        shape = tuple(int(d) for d in dims.split("x"))
    except ValueError:
        raise UsageError(f"--input '{item}': shape '{parts[1]}' must be positive integers joined by 'x', e.g. 1x3x224x224") from None
    if any(d <= 0 for d in shape):
        raise UsageError(f"--input '{item}': every dimension must be positive")
    if dtype not in DTYPES:
        raise UsageError(f"--input '{item}': unknown dtype '{dtype}' (known: {', '.join(DTYPES)})")
    low = high = None
    if len(parts) == 4:
        if dtype == "bool" or ".." not in parts[3]:
            raise UsageError(f"--input '{item}': a range is written low..high (e.g. 0..999) and needs a numeric dtype")
        lo, hi = parts[3].split("..", 1)
        integer = np.dtype(dtype).kind in "iu"
        low, high = _number(lo.strip(), item, integer), _number(hi.strip(), item, integer)
        if low > high:
            raise UsageError(f"--input '{item}': range {parts[3]} is empty (low > high)")
    return InputSpec(name, shape, dtype, low, high)


def parse_inputs(items: Sequence[str]) -> list[InputSpec]:
    if not items:
        raise UsageError(f"give the model's inputs with --input {SYNTAX} (one flag per forward() argument, in order)")
    specs = [parse_input(i) for i in items]
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise UsageError(f"--input '{s.name}' is given twice; input names must be unique")
        seen.add(s.name)
    return specs


def sample_feeds(specs: Sequence[InputSpec], seed: int, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Seeded sample data for every input, at ``shapes`` (by input name; missing: the shape as written)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for s in specs:
        shape, dt = (shapes or {}).get(s.name, s.shape), np.dtype(s.dtype)
        if dt.kind == "f":
            data = rng.standard_normal(shape) if s.low is None else rng.uniform(s.low, s.high, size=shape)
            feeds[s.name] = data.astype(dt)
        elif dt.kind in "iu":
            low, high = (0, 1) if s.low is None or s.high is None else (int(s.low), int(s.high))
            feeds[s.name] = rng.integers(low, high, size=shape, endpoint=True).astype(dt)
        else:
            feeds[s.name] = rng.integers(0, 2, size=shape).astype(bool)
    return feeds
