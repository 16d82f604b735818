"""Accuracy budget of the qdq pass: keep the fewest nodes in float that bring the model within a target.

``qdq{target_cosine=0.99}`` (or ``target_top1=0.99`` for classifiers) measures the quantized
model against its float model on held-out data and puts nodes back to float, most costly
first, until the target is met:

1. The float model runs once over the held-out batches; its outputs are the reference.
2. Everything quantized is evaluated; if it meets the target, nothing stays float.
3. Sensitivity: each node's cost is the metric lost when it alone is quantized (one evaluation
   per node). Past ``group_above`` nodes, contiguous blocks of about sqrt(N) nodes (graph order)
   are measured first, and only the blocks that do not fit in half the allowed loss are refined
   node by node; nodes of the cheap blocks get an equal share of their block's cost (``estimated``).
4. Nodes ranked by cost (ties in graph order); the smallest k such that keeping the top k in float
   meets the target is found by exponential search, then bisection (O(log N) evaluations).
   The search assumes the metric grows with k along the ranking (usual, not guaranteed: ``curve``
   shows what was seen). k = N is the float model itself, so when no k < N meets the target the best configuration
   evaluated is returned with ``met=False``.

Time is linear in the number of candidate nodes (N + O(log N) evaluations, fewer with blocks);
``max_evaluations`` caps it (the sweep stops early, keeping 2*ceil(log2 N)+1 for the search, and
the nodes left unmeasured rank last). Configurations already evaluated are not run again.

Metrics: ``cosine``, per float output, the cosine similarity of the flattened reference and
quantized outputs concatenated over every held-out sample (float64 running sums, streamed batch
by batch); the overall metric is the minimum over outputs, and a quantized output holding NaN or
inf counts as 0. ``top1``, the fraction of rows (every index of the leading axes) of the first
float output whose argmax over the last axis agrees with the float model's (a row holding NaN
or inf disagrees).

Memory: the reference stays in memory for the whole search: held-out samples x the float outputs'
size (their own dtype, float32: 4 bytes an element) for cosine, one int64 per row for top1. The
caller bounds the held-out count. One ORT session is alive at a time (plain CPU, basic graph
optimizations so the values are what the Q/DQ graph says), freed after each evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx

from converter import progress
from converter.ort_session import make_session, session_options

Feeds = dict[str, np.ndarray]
Metric = Literal["cosine", "top1"]
GROUP_ABOVE = 64
"""More candidate nodes than this: sensitivity is measured by blocks first."""

_LOG = logging.getLogger(__name__)
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass
class BudgetResult:
    metric: str
    target: float
    float_baseline: float
    """The metric of the float model against itself: 1.0 by definition (not evaluated); costs are measured from it."""
    all_quantized: float
    achieved: float
    met: bool
    kept_float: dict[str, float]
    """Node -> its cost, in the order they were put back to float (the ranking's top k)."""
    curve: list[tuple[int, float]]
    """(nodes kept float, metric) for every top-k configuration of the ranking evaluated (k = 0 first), sorted by k."""
    sensitivity: dict[str, float]
    """Every candidate node -> its cost: measured, a share of its block's cost (``estimated``) or 0.0 (``unmeasured``)."""
    evaluations: int
    samples: int
    """Held-out samples: the first axis of the first input with one, summed over batches (1 per batch otherwise)."""
    seconds: float
    estimated: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _OutOfEvaluations(Exception):
    pass


def _session(model: onnx.ModelProto):
    so = session_options(opt_level="basic")  # no Q/DQ fusion: the values are what the graph says
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


def _cosine(ff: float, qq: float, fq: float) -> float:
    if ff == 0.0 and qq == 0.0:
        return 1.0
    if ff > 0.0 and qq > 0.0:
        return float(min(1.0, max(-1.0, fq / math.sqrt(ff * qq))))
    return 0.0


class _Reference:
    """The float model's outputs on the held-out data, and the metric of another model against them."""

    def __init__(self, float_model: onnx.ModelProto, batches: Callable[[], Iterator[Feeds]], metric: Metric) -> None:
        self.metric = metric
        self.batches = batches
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
            self.ff = [sum(float(np.dot(r[i].astype(np.float64).ravel(), r[i].astype(np.float64).ravel())) for r in self.data) for i in range(len(self.names))]

    def nbytes(self) -> int:
        return sum(a.nbytes for row in self.data for a in row)

    def score(self, model: onnx.ModelProto) -> float:
        sess = _session(model)
        have = {o.name for o in sess.get_outputs()}
        missing = [n for n in self.names if n not in have]
        if missing:
            raise ValueError(f"the quantized model lacks the float model's outputs {missing}")
        k = len(self.names)
        fq, qq, bad = [0.0] * k, [0.0] * k, [False] * k
        matches = rows = 0
        count = 0
        for count, feeds in enumerate(self.batches(), 1):
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
                q64 = q.astype(np.float64).ravel()
                fq[i] += float(np.dot(r.astype(np.float64).ravel(), q64))
                qq[i] += float(np.dot(q64, q64))
            del got
        del sess
        if count != len(self.data):
            raise ValueError(f"batches() yielded {count} batches, {len(self.data)} on the float run: it must give the same batches each call")
        if self.metric == "top1":
            return matches / rows if rows else 1.0
        return min(0.0 if bad[i] else _cosine(self.ff[i], qq[i], fq[i]) for i in range(k))


class _Evaluator:
    """Memoized evaluations of ``build(kept float)``, counted and capped."""

    def __init__(self, ref: _Reference, build: Callable[[frozenset[str]], onnx.ModelProto], log: logging.Logger, planned: int) -> None:
        self.ref, self.build, self.log = ref, build, log
        self.memo: dict[frozenset[str], float] = {}
        self.evaluations = 0
        self.limit: int | None = None
        self.exhausted = False
        self.planned = planned
        self.every = max(1, planned // 10)
        self.task: progress.Task | None = None

    def __call__(self, kept: frozenset[str]) -> float:
        if kept in self.memo:
            return self.memo[kept]
        if self.limit is not None and self.evaluations >= self.limit:
            self.exhausted = True
            raise _OutOfEvaluations
        model = self.build(kept)
        value = self.ref.score(model)
        del model
        self.evaluations += 1
        self.memo[kept] = value
        if self.task is not None:
            self.task.advance()
        level = logging.INFO if self.evaluations == 1 or self.evaluations % self.every == 0 else logging.DEBUG
        self.log.log(level, "qdq budget: evaluation %d of ~%d planned: %d nodes kept float -> %s %.6f", self.evaluations, self.planned, len(kept), self.ref.metric, value)
        return value


def _sweep(ev: _Evaluator, nodes: list[str], baseline: float, target: float, group_above: int) -> tuple[dict[str, float], dict[str, float]]:
    """(measured cost per node, estimated cost per node) of quantizing each node alone; stops when evaluations run out."""
    everything = frozenset(nodes)
    measured: dict[str, float] = {}
    estimated: dict[str, float] = {}

    def cost(group: list[str]) -> float:
        return baseline - ev(everything - frozenset(group))

    try:
        if len(nodes) <= group_above:
            for n in nodes:
                measured[n] = cost([n])
            return measured, estimated
        size = math.ceil(math.sqrt(len(nodes)))
        blocks = [nodes[i : i + size] for i in range(0, len(nodes), size)]
        block_cost: list[float] = []
        for block in blocks:
            block_cost.append(cost(block))
            estimated.update((n, block_cost[-1] / len(block)) for n in block)
        allowed, spent, cheap = (baseline - target) / 2, 0.0, set()
        for i in sorted(range(len(blocks)), key=lambda i: block_cost[i]):
            if spent + max(block_cost[i], 0.0) > allowed:
                break
            spent += max(block_cost[i], 0.0)
            cheap.add(i)
        ev.log.info("qdq budget: %d blocks of %d nodes measured; refining %d costly blocks node by node", len(blocks), size, len(blocks) - len(cheap))
        for i in sorted(set(range(len(blocks))) - cheap, key=lambda i: -block_cost[i]):
            for n in blocks[i]:
                measured[n] = block_cost[i] if len(blocks[i]) == 1 else cost([n])
    except _OutOfEvaluations:
        ev.log.warning("qdq budget: max_evaluations reached after %d evaluations: %d of %d nodes measured, the others rank after them",
                       ev.evaluations, len(measured), len(nodes))
    return measured, {n: c for n, c in estimated.items() if n not in measured}


def _search(ev: _Evaluator, ranked: list[str], target: float, curve: dict[int, float]) -> int | None:
    """Smallest k in [1, N-1] with the top k kept float meeting ``target`` (exponential search, then bisection); None if none."""

    def meets(k: int) -> bool:
        curve[k] = ev(frozenset(ranked[:k]))
        return curve[k] >= target

    top = len(ranked) - 1
    lo, hi, k = 0, None, 1
    try:
        while k <= top:
            if meets(k):
                hi = k
                break
            lo = k
            if k == top:
                break
            k = min(2 * k, top)
        while hi is not None and hi - lo > 1:
            mid = (lo + hi) // 2
            if meets(mid):
                hi = mid
            else:
                lo = mid
    except _OutOfEvaluations:
        ev.log.warning("qdq budget: max_evaluations reached during the search after %d evaluations", ev.evaluations)
    return hi


def fit_budget(
    float_model: onnx.ModelProto,
    build: Callable[[frozenset[str]], onnx.ModelProto],
    nodes: list[str],
    batches: Callable[[], Iterator[Feeds]],
    target: float,
    metric: Literal["cosine", "top1"] = "cosine",
    log: logging.Logger | None = None,
    max_evaluations: int | None = None,
    *,
    group_above: int = GROUP_ABOVE,
) -> BudgetResult:
    """The fewest of ``nodes`` to keep in float (``build(kept)`` makes that model) for ``metric`` >= ``target`` on ``batches()``.

    ``batches`` is called once per evaluation and must yield the same batches each time.
    """
    start = time.perf_counter()
    log = log or _LOG
    if metric not in ("cosine", "top1"):
        raise ValueError(f"metric must be cosine or top1, not {metric!r}")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")
    if len(set(nodes)) != len(nodes):
        raise ValueError("nodes holds duplicate names")
    if max_evaluations is not None and max_evaluations < 1:
        raise ValueError("max_evaluations must be >= 1")
    n = len(nodes)
    reserve = 2 * math.ceil(math.log2(n)) + 1 if n > 1 else 0
    sweep = n if n <= group_above else 2 * math.ceil(math.sqrt(n))
    planned = 1 + sweep + reserve if max_evaluations is None else min(1 + sweep + reserve, max_evaluations)
    with progress.step("qdq budget: reference run"):
        ref = _Reference(float_model, batches, metric)
    log.info("qdq budget: %s >= %g over %d held-out samples (reference %.1f MiB), %d candidate nodes, ~%d evaluations planned",
             metric, target, ref.samples, ref.nbytes() / 2**20, n, planned)
    baseline = 1.0
    ev = _Evaluator(ref, build, log, planned)
    ev.limit = max_evaluations
    with progress.step(f"qdq budget: {metric} >= {target:g}", total=planned, unit="evaluations") as task:
        ev.task = task
        all_quantized = ev(frozenset())
        curve = {0: all_quantized}

        def result(k: int, met: bool, sensitivity: dict[str, float], ranked: list[str], estimated=(), unmeasured=(), notes=()) -> BudgetResult:
            seconds = time.perf_counter() - start
            log.info("qdq budget: %s %.6f with %d of %d nodes kept float (%s); %d evaluations, %.1f s",
                     metric, curve[k], k, n, "target met" if met else "target NOT met", ev.evaluations, seconds)
            return BudgetResult(metric, target, baseline, all_quantized, curve[k], met, {x: sensitivity.get(x, 0.0) for x in ranked[:k]},
                                sorted(curve.items()), sensitivity, ev.evaluations, ref.samples, seconds, list(estimated), list(unmeasured), list(notes))

        if all_quantized >= target:
            return result(0, True, {}, nodes)
        if max_evaluations is not None:
            ev.limit = max(ev.evaluations, max_evaluations - reserve)
        measured, estimated = _sweep(ev, nodes, baseline, target, group_above)
        ev.limit = max_evaluations
        unmeasured = [x for x in nodes if x not in measured and x not in estimated]
        sensitivity = {x: measured.get(x, estimated.get(x, 0.0)) for x in nodes}
        order = {x: i for i, x in enumerate(nodes)}
        ranked = sorted((x for x in nodes if x not in unmeasured), key=lambda x: (-sensitivity[x], order[x])) + unmeasured
        notes = []
        if estimated:
            notes.append(f"{len(estimated)} of {n} nodes in cheap blocks: cost estimated as an equal share of their block's, not measured")
        if unmeasured:
            notes.append(f"max_evaluations={max_evaluations}: {len(unmeasured)} of {n} nodes not measured, ranked last in graph order")
        ev.exhausted = False
        k = _search(ev, ranked, target, curve)
        if ev.exhausted:
            notes.append(f"max_evaluations={max_evaluations} reached during the search: " + ("the kept set may not be the smallest" if k is not None else "stopped before the target was met"))
        if k is not None:
            return result(k, True, sensitivity, ranked, estimated, unmeasured, notes)
        best = max(curve, key=lambda c: (curve[c], -c))
        notes.append(f"{metric} >= {target:g} not reached by keeping up to {max(curve)} of {n} nodes float (all {n} float is the float model): "
                     f"best {curve[best]:.6f} with {best} kept float")
        log.warning("qdq budget: %s", notes[-1])
        return result(best, False, sensitivity, ranked, estimated, unmeasured, notes)
