"""``convert bench``: an artifact's latency percentiles and throughput per batch size, optionally against another.

    measure.py   the interleaved timing loop, the timing plan, latency statistics and ratios (pure logic)
    shapes.py    ``--batch`` text, each input's shape at a batch size, the feeds, two artifacts' common inputs
    command.py   bench() (what converter.bench is) and the ``convert bench`` subcommand (registered by this package)
"""

from __future__ import annotations

from converter.benchmark.command import BenchCommand, BenchRun, bench
from converter.benchmark.measure import BatchResult, LatencyStats, TimingPlan, latency_stats, ratios, time_interleaved
from converter.command_api import CommandRegistry
from converter.hookspecs import hookimpl

__all__ = ["BatchResult", "BenchCommand", "BenchRun", "LatencyStats", "TimingPlan", "bench", "latency_stats", "ratios", "time_interleaved"]


@hookimpl
def converter_register_commands(registry: CommandRegistry) -> None:
    registry.add(BenchCommand)
