"""Scoring the accuracy budget's configurations: in this process, and as Ray tasks (``--ray``).

:class:`Reference` holds the float model's outputs on the held-out batches and scores another model
against them (the metrics are :mod:`~converter.passes.qdq._budget`'s); the budget scores each
configuration with it in this process, and :class:`RayEvaluations` scores the sweep's independent
ones with it in Ray tasks (:func:`score_task`): the same code on the same batches in the same order,
with the same float64 running sums, so the same value bit for bit. Neither depends on thread counts
(a task has one, this process every core): ONNX Runtime's CPU kernels give the same bits with 1 to 16
threads (checked: MatMul, Gemm, Conv, LayerNormalization, Softmax, Q/DQ), and the sums are numpy's,
not BLAS's (whose dot product does not). The budget still checks one value against this process's.

The reference and the held-out batches go into Ray's object store once (``ray.put``); each
configuration's model is built here and sent serialized (over 2 GiB is refused, as sharded
calibration does), two per Ray CPU in flight, the scores coming back in submission order. One CPU
and one ONNX Runtime thread a task. The cluster is :func:`converter.ray_cluster.connect`'s, joined
on first use and left when the budget ends (``auto``: a local cluster started for it when none runs).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from itertools import chain
from types import ModuleType
from typing import Any, Literal, Self

import numpy as np
import onnx

from converter.calibration.ray_runner import TASK_CPUS, cluster, cluster_cpus
from converter.errors import ConverterError, UsageError
from converter.ort_session import make_session, session_options
from converter.ray_cluster import import_ray

Feeds = dict[str, np.ndarray]
Metric = Literal["cosine", "top1"]
MAX_MODEL_BYTES = 2**31 - 1
"""protobuf's limit for one serialized message: what goes to the workers in one piece."""

_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _session(model: onnx.ModelProto, threads: int = 0):
    so = session_options(threads, opt_level="basic")  # no Q/DQ fusion: the values are what the graph says
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return make_session(model, options=so)


def _cast(feeds: Feeds, session) -> Feeds:
    """Float feeds cast to the float type the session's input declares (e.g. float32 data for a float16 input)."""
    types = {i.name: _FLOAT_TYPES.get(i.type) for i in session.get_inputs()}
    out = {}
    for name, value in feeds.items():
        want = types.get(name)
        out[name] = value.astype(want) if want is not None and value.dtype.kind == "f" and value.dtype != want else value
    return out


def _samples(feeds: Feeds) -> int:
    return next((int(v.shape[0]) for v in feeds.values() if getattr(v, "ndim", 0) >= 1), 1)


def _dot(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """sum(a * b) (``b`` None: of a * a) in float64, summed by numpy (pairwise), not by BLAS: BLAS splits a dot product by its
    thread count (all cores here, one in a Ray task, OMP_NUM_THREADS), and the last bits of the sum with it."""
    p = a.astype(np.float64).ravel()  # a copy, multiplied in place
    p *= p if b is None else b.astype(np.float64).ravel()
    return float(p.sum())


def _cosine(ff: float, qq: float, fq: float) -> float:
    if ff == 0.0 and qq == 0.0:
        return 1.0
    if ff > 0.0 and qq > 0.0:
        return float(min(1.0, max(-1.0, fq / math.sqrt(ff * qq))))
    return 0.0


class Reference:
    """The float model's outputs on the held-out data, and the metric of another model against them (picklable: no data source)."""

    def __init__(self, float_model: onnx.ModelProto, batches: Callable[[], Iterator[Feeds]], metric: Metric) -> None:
        self.metric = metric
        self.names: list[str] = []
        self.data: list[list[np.ndarray]] = []  # per batch, per compared output (top1: argmax per row)
        self.samples = 0
        sess = _session(float_model)
        outputs = [o.name for o in sess.get_outputs()]
        for feeds in batches():
            got = dict(zip(outputs, sess.run(outputs, _cast(feeds, sess))))
            if not self.names:
                self.names = [n for n in outputs if got[n].dtype.kind == "f"][: 1 if metric == "top1" else None]
                if not self.names:
                    raise ValueError(f"the float model has no float output to compare (outputs: {outputs})")
            row = []
            for name in self.names:
                value = got[name]
                if not np.isfinite(value).all():
                    raise ValueError(f"the float model's output '{name}' holds NaN or inf on held-out batch {len(self.data)}: no reference")
                if metric == "top1":
                    if value.ndim == 0:
                        raise ValueError(f"top1 needs an output with a class axis; '{name}' is a scalar")
                    value = np.argmax(value, axis=-1).ravel().astype(np.int64)
                row.append(value)
            self.data.append(row)
            self.samples += _samples(feeds)
            del got
        del sess
        if not self.data:
            raise ValueError("the held-out data yielded no batch")
        if metric == "cosine":
            self.ff = [sum(_dot(r[i]) for r in self.data) for i in range(len(self.names))]

    def nbytes(self) -> int:
        return sum(a.nbytes for row in self.data for a in row)

    def score(self, model: onnx.ModelProto, batches: Callable[[], Iterator[Feeds]], threads: int = 0) -> float:
        """``model``'s metric over ``batches()`` (the float run's batches again): in this process, and in each runner task."""
        sess = _session(model, threads)
        have = {o.name for o in sess.get_outputs()}
        missing = [n for n in self.names if n not in have]
        if missing:
            raise ValueError(f"the quantized model lacks the float model's outputs {missing}")
        k = len(self.names)
        fq, qq, bad = [0.0] * k, [0.0] * k, [False] * k
        matches = rows = 0
        count = 0
        for count, feeds in enumerate(batches(), 1):
            if count > len(self.data):
                raise ValueError(f"batches() yielded more batches than on the float run ({len(self.data)})")
            ref = self.data[count - 1]
            got = sess.run(self.names, _cast(feeds, sess))
            for i, (r, q) in enumerate(zip(ref, got)):
                if self.metric == "top1":
                    if q.ndim == 0 or q.size // q.shape[-1] != r.size:
                        raise ValueError(f"output '{self.names[i]}' is {list(q.shape)}: not {r.size} rows of classes as in the float model")
                    pred, finite = np.argmax(q, axis=-1).ravel(), np.isfinite(q).all(axis=-1).ravel()
                    matches += int(np.count_nonzero((pred == r) & finite))
                    rows += r.size
                    continue
                if q.shape != r.shape:
                    raise ValueError(f"output '{self.names[i]}' is {list(q.shape)} in the quantized model, {list(r.shape)} in the float one")
                if bad[i] or not np.isfinite(q).all():
                    bad[i] = True
                    continue
                fq[i] += _dot(r, q)
                qq[i] += _dot(q)
            del got
        del sess
        if count != len(self.data):
            raise ValueError(f"batches() yielded {count} batches, {len(self.data)} on the float run: it must give the same batches each call")
        if self.metric == "top1":
            return matches / rows if rows else 1.0
        return min(0.0 if bad[i] else _cosine(self.ff[i], qq[i], fq[i]) for i in range(k))

def score_task(ref: Reference, feeds: list[Feeds], model_bytes: bytes, threads: int = TASK_CPUS) -> float:
    """One Ray task: what :meth:`Reference.score` gives the serialized model in the driver, on the same batches."""
    return ref.score(onnx.load_model_from_string(model_bytes), lambda: iter(feeds), threads)


def _serialized(model: onnx.ModelProto, flag: str) -> bytes:
    if model.ByteSize() > MAX_MODEL_BYTES:
        raise UsageError(f"{flag}: the model is over 2 GiB, more than one protobuf message can carry to the workers; "
                         f"run the accuracy budget without {flag}")
    return model.SerializeToString()


class RayEvaluations:
    """The budget's runner on a Ray cluster (see the module docstring); a context around ``fit_budget``."""

    def __init__(self, address: str, log: logging.Logger, flag: str = "--ray") -> None:
        self.address, self.log, self.flag = address, log, flag
        self._stack = ExitStack()
        self._ray: ModuleType | None = None
        self._shared: tuple[Reference, Any, Any] | None = None

    def __enter__(self) -> Self:
        import_ray(self.flag)  # without Ray: exit 3 now, naming the install command
        return self

    def __exit__(self, *exc: object) -> None:
        self._shared = None
        self._stack.close()

    def _connect(self) -> ModuleType:
        if self._ray is None:
            self._ray = self._stack.enter_context(cluster(self.address, self.log, self.flag))
            self.log.info("qdq budget: sensitivity sweep in Ray tasks on %d CPUs", cluster_cpus(self._ray))
        return self._ray

    def __call__(self, configs: list[frozenset[str]], build: Callable[[frozenset[str]], onnx.ModelProto], ref: Reference,
                 batches: Callable[[], Iterator[Feeds]]) -> Iterator[tuple[frozenset[str], float]]:
        """``(kept, score)`` of each of ``configs``, in their order; closing it cancels the tasks still running."""
        models = (_serialized(build(kept), self.flag) for kept in configs)
        first = next(models)  # before connecting: a model the workers cannot take is refused at once
        ray = self._connect()
        if self._shared is None or self._shared[0] is not ref:
            self._shared = (ref, ray.put(ref), ray.put(list(batches())))
        _, ref_id, feeds_id = self._shared
        task = ray.remote(num_cpus=TASK_CPUS, max_retries=2, retry_exceptions=False)(score_task)  # a dead worker is re-run: same score
        window = 2 * cluster_cpus(ray)
        pending: deque[tuple[frozenset[str], Any]] = deque()
        try:
            for kept, data in zip(configs, chain([first], models)):
                pending.append((kept, task.remote(ref_id, feeds_id, data, TASK_CPUS)))
                if len(pending) >= window:
                    yield self._get(ray, *pending.popleft())
            while pending:
                yield self._get(ray, *pending.popleft())
        finally:
            for _, ref_ in pending:
                ray.cancel(ref_, force=True)

    @staticmethod
    def _get(ray: ModuleType, kept: frozenset[str], result: Any) -> tuple[frozenset[str], float]:
        try:
            return kept, ray.get(result)
        except ray.exceptions.RayTaskError as exc:  # the task's own error, as it would be raised in this process
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (ValueError, ConverterError)):
                raise cause from None
            raise
