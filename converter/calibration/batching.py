"""Stream samples in batches of a fixed size, up to a sample limit.

Sources yield feed dicts of any size; :func:`rebatch` cuts and joins them into
batches of ``size`` samples (the last one smaller, or dropped when the model
needs exactly ``size``), holding at most one batch plus one incoming item. Each
input is cut and joined along its own sample axis (``source.axes``: a recurrent
state on axis 1 stays ``[layers, batch, hidden]``); inputs without one (scalars)
are passed unchanged. A source ``as_yielded`` (``module:function``) is passed
through item by item: each dict is one run, never cut or joined.
"""

from __future__ import annotations

from collections.abc import Iterator

from converter.calibration.axes import Axes, axis_of, count_of, join, take
from converter.calibration.sources import CalibSource, Feeds


def samples_in(feeds: Feeds, source: CalibSource) -> int:
    """How many samples one feed dict of ``source`` holds (along its inputs' sample axes)."""
    return count_of(feeds, source.axes)


def _cut(feeds: Feeds, axes: Axes, start: int, stop: int | None) -> Feeds:
    return {k: take(v, axis_of(axes, k), start, stop) for k, v in feeds.items()}  # type: ignore[arg-type]


def _take(pending: list[Feeds], n: int, axes: Axes) -> Feeds:
    """Join the first ``n`` samples of ``pending`` (consumed in place)."""
    parts: list[Feeds] = []
    need = n
    while need > 0:
        head = pending[0]
        count = count_of(head, axes)
        if count <= need:
            parts.append(pending.pop(0))
            need -= count
        else:
            parts.append(_cut(head, axes, 0, need))
            pending[0] = _cut(head, axes, need, None)
            need = 0
    return join(parts, axes)


def rebatch(source: CalibSource, size: int, limit: int | None = None, exact: bool = False) -> Iterator[Feeds]:
    """Batches of ``size`` samples from ``source``, at most ``limit`` samples in all.

    With ``exact`` (a model whose batch dim is static), a last partial batch is dropped.
    A source ``as_yielded`` gives its items as they are, until ``limit`` samples were given.
    """
    if size < 1:
        raise ValueError("batch size must be >= 1")
    axes = source.axes
    if source.as_yielded:
        given = 0
        for item in source.batches(size):
            if limit is not None and given >= limit:
                break
            given += count_of(item, axes)
            yield item
        return
    pending: list[Feeds] = []
    held = taken = 0
    for item in source.batches(size):
        if limit is not None and taken >= limit:
            break
        n = count_of(item, axes) if item else 0
        if limit is not None and n > limit - taken:
            n = limit - taken
            item = _cut(item, axes, 0, n)
        if n == 0:
            continue
        pending.append(item)
        held += n
        taken += n
        while held >= size:
            yield _take(pending, size, axes)
            held -= size
    if held and not exact:
        yield _take(pending, held, axes)


def window(source: CalibSource, size: int, start: int, count: int, exact: bool = False) -> list[Feeds]:
    """Samples ``[start, start + count)`` of ``source`` in batches of ``size``, held in memory (keep ``count`` small).

    For held-out data: the samples after the ones calibration used. A source ``as_yielded`` is
    windowed by item (each dict is one run, as yielded).
    """
    picked: list[Feeds] = []
    seen = 0
    for item in rebatch(source, size if source.as_yielded else 1, start + count):
        if seen >= start:
            picked.append(item)
        seen += count_of(item, source.axes)
    if source.as_yielded:
        return picked
    batches = [join(picked[i : i + size], source.axes) for i in range(0, len(picked), size)]
    if exact and batches and count_of(batches[-1], source.axes) < size:
        batches.pop()
    return batches
