"""Sharded calibration on a Ray cluster (``--ray auto|ADDRESS``).

``auto`` attaches to the Ray cluster running on this machine (``ray start``, or ``RAY_ADDRESS``)
or, when none runs, starts a local one with every CPU and stops it afterwards; an ``ADDRESS``
(``HOST:6379``, ``ray://HOST:10001``) connects to that cluster, whose workers must see the
calibration data at the same path. A process that already called ``ray.init`` keeps its cluster.

The model goes into Ray's object store once (``ray.put``); each task collects one shard of the
samples (:mod:`~converter.calibration.shards`) and returns its per-tensor statistics, which the
driver merges in shard order into exactly those of a single pass. Ray is optional:
``pip install 'converter[ray]'``; without it ``--ray`` exits 3.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import onnx

from converter import progress
from converter.calibration.collector import CollectResult
from converter.calibration.shards import CollectorSettings, ShardResult, check_shardable, collect_shard, plan_shards
from converter.calibration.sources import CalibSource
from converter.calibration.stats import merge_stats
from converter.errors import ConverterError, UsageError
from converter.ray_cluster import connect, import_ray

TASK_CPUS = 1
"""CPUs each shard asks Ray for, and the ONNX Runtime threads it runs with: one shard per CPU, no oversubscription."""
_MAX_MODEL_BYTES = 2**31 - 1
"""protobuf's limit for one serialized message: what goes to the workers in one piece."""


@contextmanager
def cluster(address: str, log: logging.Logger, flag: str = "--ray") -> Iterator[ModuleType]:
    """Ray connected as :func:`converter.ray_cluster.connect` does (``auto``: the local cluster, started when none runs)."""
    with connect(address, flag, log) as session:
        yield session.ray


def cluster_cpus(ray: ModuleType) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def gather(ray: ModuleType, refs: list[Any], on_done: Callable[[Any], None] | None = None) -> list[Any]:
    """The results of ``refs`` in their order, calling ``on_done`` as each finishes; the first failure cancels the rest and is
    raised as the task raised it (a UsageError or PassRefused in a worker is the user's, as in one process)."""
    pending, done_by_ref = list(refs), {}
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            done_by_ref[done[0]] = ray.get(done[0])
            if on_done is not None:
                on_done(done_by_ref[done[0]])
    except Exception as exc:
        for ref in pending:
            ray.cancel(ref, force=True)
        cause = getattr(exc, "cause", None)
        if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, ConverterError):
            raise cause from None
        raise
    return [done_by_ref[r] for r in refs]


def collect_sharded(model: onnx.ModelProto, settings: CollectorSettings, source: CalibSource, *, limit: int | None, address: str,
                    log: logging.Logger, flag: str = "--ray") -> tuple[CollectResult, dict[str, Any]]:
    """The collector's result over ``source`` (at most ``limit`` samples), collected in shards on Ray; and facts about the run.

    Exactly what ``Collector.run`` gives in one process: the same batches run the model, and the statistics merge exactly.
    """
    count = check_shardable(source, flag)
    total = min(count, limit) if limit is not None else count
    if model.ByteSize() > _MAX_MODEL_BYTES:
        raise UsageError(f"{flag}: the model is over 2 GiB, more than one protobuf message can carry to the workers; calibrate without {flag}")
    start = time.perf_counter()
    with cluster(address, log, flag) as ray:
        cpus = cluster_cpus(ray)
        shards = plan_shards(total, settings.batch_size, cpus)
        model_ref = ray.put(model.SerializeToString())  # once: every task reads it from the object store
        task = ray.remote(num_cpus=TASK_CPUS, max_retries=2, retry_exceptions=False)(collect_shard)  # a dead worker is re-run; a shard gives the same result twice
        refs = [task.remote(model_ref, settings, source, i, a, b, TASK_CPUS) for i, (a, b) in enumerate(shards)]
        with progress.step(f"calibrate ({len(shards)} shards on {cpus} Ray CPUs)", total=total, unit="samples") as step:

            def done(result: ShardResult) -> None:
                step.advance(result.samples)
                log.info("calibration: shard %d/%d done (%d samples, %.1f s)", result.index + 1, len(shards), result.samples, result.seconds)

            results: list[ShardResult] = gather(ray, refs, done)
    merged = merge_stats(r.stats for r in results)
    collected = CollectResult(merged, samples=sum(r.samples for r in results), batches=sum(r.batches for r in results),
                              chunks=max((r.chunks for r in results), default=0), seconds=time.perf_counter() - start,
                              chunk_sizes=results[0].chunk_sizes if results else [])
    facts = {"ray_shards": len(shards), "ray_cpus": cpus, "ray_shard_seconds": [round(r.seconds, 3) for r in results]}
    return collected, facts


__all__ = ["TASK_CPUS", "cluster", "cluster_cpus", "collect_sharded", "gather", "import_ray"]
