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
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from converter.errors import BackendUnavailable, describe_exception
from converter.zoo.cases import Unit
from converter.zoo.local import unrunnable
from converter.zoo.runner import configure_worker, error_result, run_unit
from converter.zoo.sources import Files, Source, pack_case, pack_model, safe_name, unpack

INSTALL = "pip install 'converter[ray]'"
MAX_RETRIES = 2
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a named cluster's port before exit 3."""


def import_ray() -> ModuleType:
    """The ``ray`` module; exit 3 naming the install command when it is missing."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


@dataclass
class Cluster:
    """The Ray session a run uses, and what it is."""

    ray: ModuleType
    address: str
    started_here: bool
    cpus: float
    gpus: float

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "started_here": self.started_here, "cpus": self.cpus, "gpus": self.gpus}


def _unreachable(address: str) -> str | None:
    """Why ``host:port`` (or ``ray://host:port``) takes no connection, else None (Ray itself waits minutes on a dead address)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None  # not host:port: Ray says what it makes of it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def _init(ray: ModuleType, address: str) -> bool:
    """Connect (or start); True when this call started the cluster."""
    verbose = logging.getLogger("converter").getEffectiveLevel() <= logging.INFO
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING if verbose else logging.ERROR}
    named = address if address != "auto" else os.environ.get("RAY_ADDRESS", "")
    if named:  # a cluster the user named (or RAY_ADDRESS did): connect to it or say why not, never start another
        where = f"--ray {address}" + (f" (RAY_ADDRESS={named})" if named != address else "")
        why = _unreachable(named)
        try:
            if why is None:
                ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            why = describe_exception(exc, 200)
        if why is not None:
            raise BackendUnavailable(f"{where}: cannot connect to a Ray cluster there ({why}); start one with 'ray start --head', "
                                     "or use --ray auto without RAY_ADDRESS to start one for this run")
        return False
    try:
        ray.init(address="auto", **quiet)
        return False
    except ConnectionError:  # no cluster running: start one on this machine, for this run only
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        return True


@contextmanager
def connect(address: str) -> Iterator[Cluster]:
    """A Ray session for one run: reuses this process's if it has one (left as it was), else connects or starts
    one and shuts down at the end what it connected or started (a cluster it only connected to keeps running)."""
    ray = import_ray()
    own = not ray.is_initialized()
    started = _init(ray, address) if own else False
    try:
        resources = ray.cluster_resources()
        gcs = getattr(ray.get_runtime_context(), "gcs_address", None)  # None through Ray Client (ray://)
        yield Cluster(ray, str(gcs or address), started, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))
    finally:
        if own:
            ray.shutdown()


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
