"""Stream samples in batches of a fixed size, up to a sample limit.

Sources yield feed dicts of any size; :func:`rebatch` cuts and joins them into
batches of ``size`` samples (the last one smaller, or dropped when the model
needs exactly ``size``), holding at most one batch plus one incoming item.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from converter.calibration.sources import CalibSource, Feeds


def _take(pending: list[Feeds], n: int) -> Feeds:
    """Join the first ``n`` samples of ``pending`` (consumed in place)."""
    parts: list[Feeds] = []
    need = n
    while need > 0:
        head = pending[0]
        count = len(next(iter(head.values())))
        if count <= need:
            parts.append(pending.pop(0))
            need -= count
        else:
            parts.append({k: v[:need] for k, v in head.items()})
            pending[0] = {k: v[need:] for k, v in head.items()}
            need = 0
    if len(parts) == 1:
        return {k: np.ascontiguousarray(v) for k, v in parts[0].items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def rebatch(source: CalibSource, size: int, limit: int | None = None, exact: bool = False) -> Iterator[Feeds]:
    """Batches of ``size`` samples from ``source``, at most ``limit`` samples in all.

    With ``exact`` (a model whose batch dim is static), a last partial batch is dropped.
    """
    if size < 1:
        raise ValueError("batch size must be >= 1")
    pending: list[Feeds] = []
    held = taken = 0
    for item in source.batches(size):
        if limit is not None and taken >= limit:
            break
        n = len(next(iter(item.values()))) if item else 0
        if limit is not None and n > limit - taken:
            n = limit - taken
            item = {k: v[:n] for k, v in item.items()}
        if n == 0:
            continue
        pending.append(item)
        held += n
        taken += n
        while held >= size:
            yield _take(pending, size)
            held -= size
    if held and not exact:
        yield _take(pending, held)
