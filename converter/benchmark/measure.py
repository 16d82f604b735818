"""The timing loop and the statistics of ``convert bench``: pure logic, no model or backend in sight.

A measurement is a list of latencies in nanoseconds (``time.perf_counter_ns`` around one call).
:func:`time_interleaved` takes one or more callables (one per artifact) and runs them in rounds,
each round calling every callable once, so that two artifacts compared share the same machine
state (clock boost, thermal, other load) as closely as one process allows. :func:`latency_stats`
turns the samples into the numbers trtexec users expect.

Percentiles are numpy's ``method="linear"`` (the default of ``numpy.percentile``: linear
interpolation between the two nearest ranks, ``(n - 1) * q / 100``); the standard deviation is
the population one (``ddof=0``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PERCENTILE_METHOD = "linear"
"""How percentiles interpolate between ranks (numpy's ``method``)."""

DEFAULT_DURATION_S = 3.0
"""Timed seconds per batch size (and per artifact) when neither ``--iterations`` nor ``--duration`` is given."""

MIN_ITERATIONS = 10
"""A duration-bound measurement still times at least this many runs per artifact."""

LATENCY_KEYS = ("min", "mean", "median", "p90", "p99", "max", "std")
"""The keys of ``latency_ms`` in the JSON report, in that order."""


@dataclass(frozen=True)
class LatencyStats:
    """Latency statistics of one measurement, in milliseconds."""

    iterations: int
    min: float
    mean: float
    median: float
    p90: float
    p99: float
    max: float
    std: float

    def to_json(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in LATENCY_KEYS}


def latency_stats(samples_ns: Sequence[int] | np.ndarray) -> LatencyStats:
    """min, mean, median, p90, p99, max and std (ddof=0) of latencies given in nanoseconds, in ms.

    Percentiles use numpy's ``method="linear"`` (:data:`PERCENTILE_METHOD`).
    """
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.ndim != 1 or ms.size == 0:
        raise ValueError("latency_stats needs a non-empty 1-D sequence of latencies")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99], method=PERCENTILE_METHOD)
    return LatencyStats(
        iterations=int(ms.size), min=float(ms.min()), mean=float(ms.mean()), median=float(p50),
        p90=float(p90), p99=float(p99), max=float(ms.max()), std=float(ms.std(ddof=0)),
    )


@dataclass(frozen=True)
class BatchResult:
    """One artifact at one batch size: its latency statistics and the throughput they give."""

    batch: int
    latency: LatencyStats

    @property
    def queries_per_s(self) -> float:
        """Runs (queries) per second at the median latency: ``1000 / median_ms``."""
        return 1000.0 / self.latency.median if self.latency.median > 0 else math.inf

    @property
    def throughput_per_s(self) -> float:
        """Samples per second at the median latency: ``batch * 1000 / median_ms``."""
        return self.batch * self.queries_per_s

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "iterations": self.latency.iterations, "latency_ms": self.latency.to_json(),
            "throughput_per_s": self.throughput_per_s, "queries_per_s": self.queries_per_s,
        }


def ratios(this: BatchResult, other: BatchResult) -> dict[str, float]:
    """Other over this, both: ``latency`` = other median / this median (> 1: other is slower),
    ``throughput`` = other throughput / this throughput (> 1: other is faster)."""
    if this.batch != other.batch:
        raise ValueError(f"ratios of different batch sizes ({this.batch} and {other.batch})")
    latency = other.latency.median / this.latency.median if this.latency.median > 0 else math.inf
    throughput = other.throughput_per_s / this.throughput_per_s if this.throughput_per_s > 0 else math.inf
    return {"batch": this.batch, "latency": latency, "throughput": throughput}


@dataclass(frozen=True)
class TimingPlan:
    """When a measurement stops: after ``iterations`` runs, or after ``duration_s`` seconds (and at least ``min_iterations`` runs).

    Exactly one of ``iterations`` and ``duration_s`` is set. Both count per artifact: comparing two
    artifacts for 3 s times about 6 s of rounds.
    """

    iterations: int | None = None
    duration_s: float | None = None
    min_iterations: int = MIN_ITERATIONS

    def __post_init__(self) -> None:
        if (self.iterations is None) == (self.duration_s is None):
            raise ValueError("a timing plan has either iterations or a duration")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError("duration must be a positive number of seconds")

    @property
    def expected_rounds(self) -> int | None:
        """The number of rounds when it is known in advance (``iterations``), else None."""
        return self.iterations

    def done(self, rounds: int, elapsed_ns: int, artifacts: int = 1) -> bool:
        """Whether ``rounds`` rounds over ``artifacts`` artifacts, ``elapsed_ns`` long in all, are enough."""
        if self.iterations is not None:
            return rounds >= self.iterations
        assert self.duration_s is not None
        return rounds >= self.min_iterations and elapsed_ns >= self.duration_s * 1e9 * artifacts

    def to_json(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "duration_s": self.duration_s}


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    plan: TimingPlan,
    warmup: int,
    *,
    clock: Callable[[], int] = time.perf_counter_ns,
    on_round: Callable[[], None] | None = None,
) -> list[list[int]]:
    """Warm up, then time every callable once per round until ``plan`` is done; latencies in ns, one list per callable.

    Warm-up runs (``warmup`` per callable) are interleaved too and not recorded. Rounds alternate the
    order (A B, B A, A B, ...), so neither artifact always runs right after the other: a cache or
    frequency effect of going second is shared evenly. ``on_round`` is called after each round.
    """
    if not fns:
        raise ValueError("nothing to time")
    if warmup < 0:
        raise ValueError("warmup must be >= 0")
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[int]] = [[] for _ in fns]
    order = list(range(len(fns)))
    rounds = 0
    start = clock()
    while not plan.done(rounds, clock() - start, len(fns)):
        for i in order if rounds % 2 == 0 else order[::-1]:
            t0 = clock()
            fns[i]()
            samples[i].append(clock() - t0)
        rounds += 1
        if on_round is not None:
            on_round()
    return samples
