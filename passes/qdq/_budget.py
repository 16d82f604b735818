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

With a ``runner`` (``--ray``: :mod:`~converter.passes.qdq._budget_ray`) the sweep's evaluations,
independent of each other, run in parallel, each batch of them (the nodes; the blocks; the costly
blocks' nodes) cut where the sequential sweep would have run out of evaluations, and scored by the
same code, so the same values bit for bit; the search stays here. As a guard, the runner first scores
the all-quantized model once more: a value not bit for bit this process's (another CPU or ONNX Runtime
on the workers) sends the sweep back here (``ray_tasks`` says how many evaluations ran there).

Metrics: ``cosine``, per float output, the cosine similarity of the flattened reference and
quantized outputs concatenated over every held-out sample (float64 running sums, streamed batch
by batch); the overall metric is the minimum over outputs, and a quantized output holding NaN or
inf counts as 0. ``top1``, the fraction of rows (every index of the leading axes) of the first
float output whose argmax over the last axis agrees with the float model's (a row holding NaN
or inf disagrees).

Memory: the reference stays in memory for the whole search: held-out samples x the float outputs'
size (their own dtype, float32: 4 bytes an element) for cosine, one int64 per row for top1. The
caller bounds the held-out count. One ORT session is alive at a time (plain CPU, basic graph
optimizations so the values are what the Q/DQ graph says), freed after each evaluation (with a
runner: one per task besides, each task holding the reference and the held-out batches).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import onnx

from converter import progress
from converter.passes.qdq._budget_ray import Feeds, Metric, Reference

__all__ = ["GROUP_ABOVE", "BudgetResult", "Feeds", "Metric", "Reference", "Runner", "fit_budget"]

GROUP_ABOVE = 64
"""More candidate nodes than this: sensitivity is measured by blocks first."""

_LOG = logging.getLogger(__name__)


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
    ray_tasks: int = 0
    """Evaluations that ran as tasks of the ``runner`` (``--ray``), counted in ``evaluations``."""


class _OutOfEvaluations(Exception):
    pass


class Runner(Protocol):
    """Scores configurations elsewhere (``--ray``): ``(kept, score)`` of each of ``configs``, in their order."""

    def __call__(self, configs: list[frozenset[str]], build: Callable[[frozenset[str]], onnx.ModelProto], ref: Reference,
                 batches: Callable[[], Iterator[Feeds]]) -> Iterator[tuple[frozenset[str], float]]: ...


class _Evaluator:
    """Memoized evaluations of ``build(kept float)``, counted and capped; independent ones (:meth:`many`) on the runner, if any."""

    def __init__(self, ref: Reference, build: Callable[[frozenset[str]], onnx.ModelProto], batches: Callable[[], Iterator[Feeds]],
                 log: logging.Logger, planned: int, runner: Runner | None = None) -> None:
        self.ref, self.build, self.batches, self.log, self.runner = ref, build, batches, log, runner
        self.memo: dict[frozenset[str], float] = {}
        self.evaluations = self.ray_tasks = 0
        self.limit: int | None = None
        self.exhausted = self.checked = False
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
        value = self.ref.score(model, self.batches)
        del model
        return self._record(kept, value)

    def _record(self, kept: frozenset[str], value: float) -> float:
        self.evaluations += 1
        self.memo[kept] = value
        if self.task is not None:
            self.task.advance()
        level = logging.INFO if self.evaluations == 1 or self.evaluations % self.every == 0 else logging.DEBUG
        self.log.log(level, "qdq budget: evaluation %d of ~%d planned: %d nodes kept float -> %s %.6f", self.evaluations, self.planned, len(kept), self.ref.metric, value)
        return value

    def many(self, configs: list[frozenset[str]]) -> list[float]:
        """What calling this on each of ``configs`` in turn gives, as far as the sequential calls would get before running out
        of evaluations (then ``exhausted``): the same configurations are evaluated, on the runner when there is one."""
        todo: dict[frozenset[str], None] = {}
        stop = len(configs)
        for i, kept in enumerate(configs):
            if kept in self.memo or kept in todo:
                continue
            if self.limit is not None and self.evaluations + len(todo) >= self.limit:
                stop, self.exhausted = i, True
                break
            todo[kept] = None
        if not (self.runner is not None and len(todo) > 1 and self._on_runner(list(todo))):
            for kept in todo:
                self(kept)
        return [self.memo[kept] for kept in configs[:stop]]

    def _on_runner(self, todo: list[frozenset[str]]) -> bool:
        """``todo`` scored by the runner (False, nothing recorded, when its check differs from this process)."""
        assert self.runner is not None
        check = None if self.checked else next(iter(self.memo), None)  # scored here already: the runner must give the same
        self.checked = True
        results = self.runner(([check] if check is not None else []) + todo, self.build, self.ref, self.batches)
        try:
            for i, (kept, value) in enumerate(results):
                if i == 0 and check is not None:
                    if value != self.memo[check]:
                        self.log.warning("qdq budget: the Ray workers score a configuration %r, this process %r (another CPU or ONNX Runtime there?): "
                                         "evaluating in this process, for the result without --ray", value, self.memo[check])
                        self.runner = None
                        return False
                    continue
                self._record(kept, value)
                self.ray_tasks += 1
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        return True


def _sweep(ev: _Evaluator, nodes: list[str], baseline: float, target: float, group_above: int) -> tuple[dict[str, float], dict[str, float]]:
    """(measured cost per node, estimated cost per node) of quantizing each node alone; stops when evaluations run out."""
    everything = frozenset(nodes)
    measured: dict[str, float] = {}
    estimated: dict[str, float] = {}

    def costs(groups: list[list[str]]) -> list[float]:  # independent evaluations, as far as they go
        return [baseline - value for value in ev.many([everything - frozenset(g) for g in groups])]

    if len(nodes) <= group_above:
        measured.update(zip(nodes, costs([[n] for n in nodes])))
        done = len(measured) == len(nodes)
    else:
        size = math.ceil(math.sqrt(len(nodes)))
        blocks = [nodes[i : i + size] for i in range(0, len(nodes), size)]
        block_cost = costs(blocks)
        for block, c in zip(blocks, block_cost):
            estimated.update((n, c / len(block)) for n in block)
        done = len(block_cost) == len(blocks)
        if done:
            allowed, spent, cheap = (baseline - target) / 2, 0.0, set()
            for i in sorted(range(len(blocks)), key=lambda i: block_cost[i]):
                if spent + max(block_cost[i], 0.0) > allowed:
                    break
                spent += max(block_cost[i], 0.0)
                cheap.add(i)
            ev.log.info("qdq budget: %d blocks of %d nodes measured; refining %d costly blocks node by node", len(blocks), size, len(blocks) - len(cheap))
            costly = sorted(set(range(len(blocks))) - cheap, key=lambda i: -block_cost[i])
            refined = iter(costs([[n] for i in costly if len(blocks[i]) > 1 for n in blocks[i]]))
            for n, j in ((n, i) for i in costly for n in blocks[i]):
                c = block_cost[j] if len(blocks[j]) == 1 else next(refined, None)
                if c is None:
                    done = False
                    break
                measured[n] = c
    if not done:
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
    runner: Runner | None = None,
) -> BudgetResult:
    """The fewest of ``nodes`` to keep in float (``build(kept)`` makes that model) for ``metric`` >= ``target`` on ``batches()``.

    ``batches`` is called once per evaluation and must yield the same batches each time. ``runner``: where the sweep's
    evaluations run in parallel (``--ray``); the result is the same without it.
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
        ref = Reference(float_model, batches, metric)
    log.info("qdq budget: %s >= %g over %d held-out samples (reference %.1f MiB), %d candidate nodes, ~%d evaluations planned",
             metric, target, ref.samples, ref.nbytes() / 2**20, n, planned)
    baseline = 1.0
    ev = _Evaluator(ref, build, batches, log, planned, runner)
    ev.limit = max_evaluations
    with progress.step(f"qdq budget: {metric} >= {target:g}", total=planned, unit="evaluations") as task:
        ev.task = task
        all_quantized = ev(frozenset())
        curve = {0: all_quantized}

        def result(k: int, met: bool, sensitivity: dict[str, float], ranked: list[str], estimated=(), unmeasured=(), notes=()) -> BudgetResult:
            seconds = time.perf_counter() - start
            log.info("qdq budget: %s %.6f with %d of %d nodes kept float (%s); %d evaluations (%d on Ray), %.1f s",
                     metric, curve[k], k, n, "target met" if met else "target NOT met", ev.evaluations, ev.ray_tasks, seconds)
            return BudgetResult(metric, target, baseline, all_quantized, curve[k], met, {x: sensitivity.get(x, 0.0) for x in ranked[:k]},
                                sorted(curve.items()), sensitivity, ev.evaluations, ref.samples, seconds, list(estimated), list(unmeasured), list(notes),
                                ev.ray_tasks)

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
