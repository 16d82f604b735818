"""Batch sizes and feeds of ``convert bench``: ``--batch`` text, each input's shape at a batch size, the feeds.

The batch goes into the first dim of every input whose first dim is symbolic (or unknown); an input
whose first dim is fixed runs only at that batch. Other symbolic dims come from ``--input-shapes``
(whose first dim is replaced by each batch size). ``--inputs FEEDS.npz`` arrays are cut (or
repeated) along their first axis to each batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from converter.backend_api import TensorSpec
from converter.errors import UsageError
from converter.feeds import Feeds, check_feeds, seeded_feeds


def parse_batches(text: str | None) -> list[int] | None:
    """``1,8,32`` → ``[1, 8, 32]`` (duplicates dropped, order kept); None → None. Anything else is a one-line UsageError."""
    if text is None:
        return None
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1 or not item.isdigit():
            raise UsageError(f"--batch {text!r}: batch sizes must be positive integers separated by commas, e.g. --batch 1,8,32")
        if value not in out:
            out.append(value)
    return out


def _fixed(dim: object) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def _shape_text(shape: Sequence[object]) -> str:
    return "[" + ", ".join(str(d) if _fixed(d) else repr(d) if isinstance(d, str) else "?" for d in shape) + "]"


def fixed_batch(spec: TensorSpec) -> int | None:
    """The input's fixed first dim, or None when it is symbolic or unknown (or the input is a scalar)."""
    return spec.shape[0] if spec.shape and _fixed(spec.shape[0]) else None  # type: ignore[return-value]


def has_batch_axis(spec: TensorSpec) -> bool:
    """The batch goes into this input's first dim: it has one and it is not fixed."""
    return bool(spec.shape) and not _fixed(spec.shape[0])


def default_batch(specs: Sequence[TensorSpec], overrides: Mapping[str, tuple[int, ...]], npz: Feeds | None) -> int:
    """The batch size when ``--batch`` is not given: the model's fixed batch (when its inputs agree on one),
    else the first dim of the ``--inputs`` arrays, else the first dim ``--input-shapes`` gives, else 1."""
    fixed = {b for s in specs if (b := fixed_batch(s)) is not None}
    if len(fixed) == 1:
        return fixed.pop()
    if npz is not None:
        firsts = {int(npz[s.name].shape[0]) for s in specs if has_batch_axis(s) and s.name in npz and npz[s.name].ndim >= 1}
        if len(firsts) == 1 and (b := firsts.pop()) > 0:
            return b
    given = {overrides[s.name][0] for s in specs if has_batch_axis(s) and overrides.get(s.name)}
    return given.pop() if len(given) == 1 else 1


def _check_fixed_batch(spec: TensorSpec, batch: int) -> None:
    fixed = fixed_batch(spec)
    if fixed is not None and fixed != batch:
        raise UsageError(f"input '{spec.name}' has a fixed batch of {fixed} (shape {_shape_text(spec.shape)}): it cannot run at batch {batch}; "
                         f"bench it with --batch {fixed}, or convert a model whose first dim is dynamic")


def shape_at(spec: TensorSpec, batch: int, overrides: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The input's concrete shape at ``batch``: fixed dims as they are, the batch in a symbolic first dim, the rest from ``overrides``."""
    _check_fixed_batch(spec, batch)
    given = overrides.get(spec.name)
    if given is not None and len(given) != len(spec.shape):
        raise UsageError(f"--input-shapes {spec.name}: {len(given)} dims given, the input has rank {len(spec.shape)} {_shape_text(spec.shape)}")
    out: list[int] = []
    for i, dim in enumerate(spec.shape):
        if i == 0 and not _fixed(dim):
            out.append(batch)
        elif given is not None:
            if _fixed(dim) and given[i] != dim:
                raise UsageError(f"--input-shapes {spec.name}: dim {i} is fixed at {dim} in the model {_shape_text(spec.shape)}, not {given[i]}")
            out.append(given[i])
        elif _fixed(dim):
            out.append(dim)  # type: ignore[arg-type]
        else:
            example = "x".join(str(batch) if j == 0 and not _fixed(d) else str(d) if _fixed(d) else "?" for j, d in enumerate(spec.shape))
            raise UsageError(f"input '{spec.name}' has symbolic dims besides the batch {_shape_text(spec.shape)}; give them with "
                             f"--input-shapes {spec.name}:{example} (each ? a size; the first dim is replaced by each --batch)")
    return tuple(out)


def check_override_names(specs: Sequence[TensorSpec], overrides: Mapping[str, tuple[int, ...]]) -> None:
    """``--input-shapes`` may only name inputs of the model."""
    unknown = [n for n in overrides if n not in {s.name for s in specs}]
    if unknown:
        raise UsageError(f"--input-shapes names {', '.join(unknown)}, which the model does not have (its inputs: {', '.join(s.name for s in specs)})")


def _to_batch(arr: np.ndarray, batch: int) -> np.ndarray:
    n = arr.shape[0]
    if n >= batch:
        return np.ascontiguousarray(arr[:batch])
    reps = -(-batch // n)
    return np.ascontiguousarray(np.concatenate([arr] * reps, axis=0)[:batch])


def feeds_at(specs: Sequence[TensorSpec], batch: int, *, seed: int = 0, overrides: Mapping[str, tuple[int, ...]] | None = None,
             npz: Feeds | None = None, where: str = "--inputs") -> Feeds:
    """Feeds for one run at ``batch``: seeded random ones, or the ``--inputs`` arrays cut or repeated along their first axis."""
    overrides = overrides or {}
    if npz is None:
        return seeded_feeds(specs, seed, {s.name: shape_at(s, batch, overrides) for s in specs})
    feeds: Feeds = {}
    for spec in specs:
        _check_fixed_batch(spec, batch)
        arr = npz.get(spec.name)
        if arr is None:
            continue  # check_feeds names it
        if has_batch_axis(spec) and arr.ndim >= 1:
            if arr.shape[0] == 0:
                raise UsageError(f"{where}: input '{spec.name}' has no samples (shape {list(arr.shape)})")
            arr = _to_batch(arr, batch)
        feeds[spec.name] = arr
    feeds.update({k: v for k, v in npz.items() if k not in feeds and k not in {s.name for s in specs}})
    check_feeds(feeds, specs, where=where)
    return feeds


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name} {spec.dtype} {_shape_text(spec.shape)}"


def merge_interfaces(this: Sequence[TensorSpec], other: Sequence[TensorSpec], other_name: str) -> list[TensorSpec]:
    """The inputs both artifacts take: same names, dtypes and ranks; a dim fixed in either is fixed in the result.

    Anything else (a missing input, another dtype, two different fixed sizes) is a one-line UsageError.
    """
    mine, theirs = {s.name: s for s in this}, {s.name: s for s in other}
    if set(mine) != set(theirs):
        raise UsageError(f"--compare {other_name}: its inputs ({', '.join(theirs)}) are not this artifact's ({', '.join(mine)})")
    merged = []
    for name, a in mine.items():
        b = theirs[name]
        dtype_differs = "unknown" not in (a.dtype, b.dtype) and a.dtype != b.dtype
        clash = len(a.shape) != len(b.shape) or any(_fixed(x) and _fixed(y) and x != y for x, y in zip(a.shape, b.shape))
        if dtype_differs or clash:
            raise UsageError(f"--compare {other_name}: input {_describe(b)} differs from this artifact's {_describe(a)}")
        shape = tuple(x if _fixed(x) else y if _fixed(y) else x for x, y in zip(a.shape, b.shape))
        merged.append(replace(a, dtype=a.dtype if a.dtype != "unknown" else b.dtype, shape=shape))
    return merged
