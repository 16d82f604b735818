"""Connecting to Ray for ``--ray auto|ADDRESS`` (zoo check, sharded calibration, debug accuracy).

``auto`` uses the cluster ``RAY_ADDRESS`` names, else one running on this machine, else starts a local
one for this run (stopped at the end); ``ADDRESS`` (``HOST:PORT``, ``ray://HOST:PORT``) is that cluster
or nothing. A process already connected keeps its session. Ray is optional: without it ``--ray``
exits 3 naming ``pip install 'converter[ray]'``; a named cluster that does not answer is exit 3 in
one line within seconds (``ray.init`` itself retries for minutes, logging to stderr).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from converter.errors import BackendUnavailable, UsageError, describe_exception

INSTALL = "pip install 'converter[ray]'"
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a named cluster's port before exit 3."""


def import_ray(flag: str = "--ray") -> ModuleType:
    """The ``ray`` module; exit 3 naming the install command when it is missing."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(f"{flag} needs Ray, which is not installed here: {INSTALL}") from None
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


def _unreachable(address: str, flag: str) -> str | None:
    """Why ``HOST:PORT`` (or ``ray://HOST:PORT``) takes no connection, else None; a malformed address is a usage error."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{flag} {address}: expected auto, HOST:PORT (the head node's GCS, e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def _init(ray: ModuleType, address: str, flag: str, log: logging.Logger) -> bool:
    """Connect (or start); True when this call started the cluster."""
    verbose = logging.getLogger("converter").getEffectiveLevel() <= logging.INFO
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING if verbose else logging.ERROR}
    named = address if address != "auto" else os.environ.get("RAY_ADDRESS", "")
    if named:  # a cluster the user named (or RAY_ADDRESS did): connect to it or say why not, never start another
        where = f"{flag} {address}" + (f" (RAY_ADDRESS={named})" if named != address else "")
        why = _unreachable(named, flag)
        try:
            if why is None:
                ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            why = describe_exception(exc, 200)
        if why is not None:
            raise BackendUnavailable(f"{where}: cannot connect to a Ray cluster there ({why}); start one with 'ray start --head', "
                                     f"or use {flag} auto without RAY_ADDRESS to start one for this run")
        return False
    try:
        ray.init(address="auto", **quiet)
        return False
    except ConnectionError:  # no cluster running: start one on this machine, for this run only
        log.info("%s auto: no Ray cluster runs here; starting a local one with %d CPUs", flag, os.cpu_count() or 1)
        try:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            raise BackendUnavailable(f"{flag} auto: cannot start a local Ray cluster ({describe_exception(exc, 200)}); "
                                     f"name one with {flag} HOST:PORT") from None
        return True


@contextmanager
def connect(address: str, flag: str = "--ray", log: logging.Logger | None = None) -> Iterator[Cluster]:
    """A Ray session for one run: reuses this process's if it has one (left as it was), else connects or starts
    one and shuts down at the end what it connected or started (a cluster it only connected to keeps running)."""
    log = log or logging.getLogger("converter.ray")
    ray = import_ray(flag)
    own = not ray.is_initialized()
    if not own:
        log.info("%s: using the Ray cluster this process is already connected to", flag)
    started = _init(ray, address, flag, log) if own else False
    try:
        resources = ray.cluster_resources()
        gcs = getattr(ray.get_runtime_context(), "gcs_address", None)  # None through Ray Client (ray://)
        yield Cluster(ray, str(gcs or address), started, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))
    finally:
        if own:
            ray.shutdown()
