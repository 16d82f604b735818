"""Run units as Ray tasks: ``--ray auto`` (a running cluster, else one started here) or ``--ray ADDRESS``.

One task per unit, ``num_cpus=1``; a unit whose backend needs a GPU (TensorRT, CUDA) also asks for
``num_gpus=1`` when the cluster has GPUs (on a cluster without any, it runs on a CPU worker and its
backend reports itself unavailable: ``skipped``, as it would be locally). ``max_retries=2`` re-runs a
task whose worker died (Ray's system failures); a check that fails is a verdict, never retried.

What tasks need travels through Ray's object store, each piece put once: every distinct model (with
its external data) once per sha256, every case folder's manifest and data sets once per case. A task
writes them into its own temporary folder, so workers on other machines need nothing but the
converter installed, and nothing is read or downloaded again per task. Paths in a result's note and
details are rewritten to the driver's, so reports read the same as local runs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from converter.errors import describe_exception
from converter.ray_cluster import Cluster, connect, import_ray
from converter.zoo.cases import Unit
from converter.zoo.local import unrunnable
from converter.zoo.runner import configure_worker, error_result, run_unit
from converter.zoo.sources import Files, Source, pack_case, pack_model, safe_name, unpack

MAX_RETRIES = 2


def _rewrite(text: str, paths: dict[str, str]) -> str:
    for tmp, real in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(tmp, real)
    return text


def run_shipped(unit: Unit, model_name: str, model_dir: str, model: Files, case: Files, log_level: int) -> dict[str, Any]:
    """The task: write the shipped model and case into a temporary folder of its own, run the unit there."""
    configure_worker(log_level)
    with tempfile.TemporaryDirectory(prefix="zoo-ray-") as tmp:
        model_path, case_dir = unpack(Path(tmp), model_name, model, case, safe_name(unit.case))
        result = run_unit(unit, model_path, case_dir)
        paths = {str(case_dir): unit.case_dir, str(model_path.parent): model_dir, tmp: "<task folder>"}
    result["note"] = _rewrite(result["note"], paths)
    result["details"] = _rewrite(result["details"], paths)
    return result


def run(units: list[Unit], sources: dict[str, Source], cluster: Cluster) -> Iterator[dict[str, Any]]:
    """Submit every runnable unit, then yield results as tasks finish (units that cannot start come first)."""
    ray = cluster.ray
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(run_shipped)
    level = logging.getLogger("converter").getEffectiveLevel()
    models: dict[str, Any] = {}
    cases: dict[str, Any] = {}
    pending: dict[Any, Unit] = {}
    for unit in units:
        result = unrunnable(unit, sources)
        if result is not None:
            yield result
            continue
        source = sources[unit.case_dir]
        assert source.model is not None
        if source.sha256 not in models:
            models[source.sha256] = ray.put(pack_model(source))
        if unit.case_dir not in cases:
            cases[unit.case_dir] = ray.put(pack_case(Path(unit.case_dir)))
        options = {"num_gpus": 1} if unit.needs_gpu and cluster.gpus >= 1 else {}
        ref = task.options(**options).remote(unit, source.model.name, str(source.model.parent), models[source.sha256], cases[unit.case_dir], level)
        pending[ref] = unit
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            unit = pending.pop(ref)
            try:
                yield ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker (or its node) died more than MAX_RETRIES times
                yield error_result(unit, f"Ray task lost after {MAX_RETRIES} retries: {describe_exception(exc, 200)}")


__all__ = ["Cluster", "connect", "import_ray", "run", "run_shipped"]
