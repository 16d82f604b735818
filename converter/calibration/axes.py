"""Where each input holds its samples: one sample axis per input, or none (given once, fed to every run).

The model's own layout comes from the ``dynamic_batch`` analysis (a recurrent state
``[directions, batch, hidden]`` holds its samples on axis 1; a scalar ``sr`` has none);
``--calib-data FEEDS.npz?axes=state:1,sr:none`` overrides it per input. Batches are cut
and joined along each input's own axis, never along axis 0 of every array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from converter.errors import UsageError
from converter.options import parse_axis_entries

Axes = Mapping[str, int | None]
"""``{input: sample axis}``; an input missing from the mapping holds its samples on axis 0."""


def parse_axes_text(entries: Sequence[str], where: str) -> dict[str, int | None]:
    """``["state:1", "sr:none"]`` → ``{"state": 1, "sr": None}``; a one-line UsageError otherwise."""
    try:
        return parse_axis_entries(entries)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None


def parse_options(text: str, allowed: Sequence[str], where: str) -> dict[str, list[str]]:
    """``axes=state:1,sr:none`` → ``{"axes": ["state:1", "sr:none"]}``: a part without ``=`` continues the key before it."""
    out: dict[str, list[str]] = {}
    key: str | None = None
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            key, _, value = part.partition("=")
            key = key.strip()
            if key not in allowed:
                raise UsageError(f"{where}: unknown key '{key}' (known: {', '.join(allowed)})")
            out.setdefault(key, [])
            part = value.strip()
        elif key is None:
            raise UsageError(f"{where}: '{part}' is not key=value (e.g. axes=state:1,sr:none)")
        part = part.strip("[]")
        if part:
            out[key].append(part)
    return out


def axis_of(axes: Axes, name: str) -> int | None:
    return axes.get(name, 0)


def without_axis(shape: Sequence[object], axis: int | None) -> tuple:
    """The shape of one sample: ``shape`` less its sample axis (all of it when the input has none)."""
    return tuple(shape) if axis is None else tuple(d for i, d in enumerate(shape) if i != axis)


def axis_text(axis: int | None) -> str:
    return "no sample axis (given once)" if axis is None else f"samples on axis {axis}"


def count_of(feeds: Mapping[str, np.ndarray], axes: Axes) -> int:
    """Samples in ``feeds``: the size of an input's sample axis (1 when every input is batch-free)."""
    for name, value in feeds.items():
        axis = axis_of(axes, name)
        if axis is not None and np.ndim(value) > axis:
            return int(np.shape(value)[axis])
    return 1


def take(value: np.ndarray, axis: int | None, start: int, stop: int) -> np.ndarray:
    """Samples ``start:stop`` of one input along its own axis (size-1 slices keep the axis)."""
    if axis is None:
        return value
    index = [slice(None)] * value.ndim
    index[axis] = slice(start, stop)
    return value[tuple(index)]


def _contiguous(value: np.ndarray) -> np.ndarray:
    """``np.ascontiguousarray`` that keeps a 0-d array 0-d (it makes scalars 1-d)."""
    return np.ascontiguousarray(value) if np.ndim(value) else np.asarray(value)


def join(parts: Sequence[Mapping[str, np.ndarray]], axes: Axes) -> dict[str, np.ndarray]:
    """One feed dict from several, each input joined along its own axis (batch-free inputs taken once)."""
    if len(parts) == 1:
        return {k: _contiguous(v) for k, v in parts[0].items()}
    out = {}
    for name in parts[0]:
        axis = axis_of(axes, name)
        out[name] = _contiguous(parts[0][name]) if axis is None else np.concatenate([p[name] for p in parts], axis=axis)
    return out
