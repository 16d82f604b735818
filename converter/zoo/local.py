"""Run units on this machine: serially in this process, or in ``--workers N`` worker processes.

Workers are started with the ``spawn`` method (no state forked from the driver: safe with ONNX
Runtime's threads), load the plugins once each, and get paths, not bytes: the model and the case
folder are read where they lie. Results come back as each unit finishes; a worker process that
dies (out of memory, a crash in a native library) gives its unit an ``error`` verdict.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from converter.errors import describe_exception
from converter.plugin_manager import Plugins
from converter.zoo.cases import Unit
from converter.zoo.runner import configure_worker, error_result, run_unit
from converter.zoo.sources import Source


def unrunnable(unit: Unit, sources: dict[str, Source]) -> dict[str, Any] | None:
    """The ``error`` result of a unit that cannot start (unreadable manifest, missing or changed model), else None."""
    if unit.check is None:
        return error_result(unit, unit.spec_error or "unreadable case")
    source = sources[unit.case_dir]
    if source.error is not None:
        return error_result(unit, source.error)
    return None


def run_serial(units: list[Unit], sources: dict[str, Source], plugins: Plugins) -> Iterator[dict[str, Any]]:
    """One unit after the other, in this process, with the command's plugins."""
    for unit in units:
        result = unrunnable(unit, sources)
        if result is None:
            model = sources[unit.case_dir].model
            assert model is not None
            result = run_unit(unit, model, plugins=plugins)
        yield result


def _work(unit: Unit, model: str) -> dict[str, Any]:
    return run_unit(unit, Path(model))


def run_pool(units: list[Unit], sources: dict[str, Source], workers: int) -> Iterator[dict[str, Any]]:
    """Up to ``workers`` processes (never more than there are units to run); results as they finish."""
    todo: list[tuple[Unit, Path]] = []
    for unit in units:
        result = unrunnable(unit, sources)
        if result is not None:
            yield result
        else:
            model = sources[unit.case_dir].model
            assert model is not None
            todo.append((unit, model))
    if not todo:
        return
    level = logging.getLogger("converter").getEffectiveLevel()
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=configure_worker, initargs=(level,))
    try:
        futures: dict[Future[dict[str, Any]], Unit] = {pool.submit(_work, unit, str(model)): unit for unit, model in todo}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 -- BrokenProcessPool: the worker died under this unit (or under another one)
                yield error_result(futures[future], f"worker process lost: {describe_exception(exc)}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
