"""The qdq pass's accuracy budget, wired to its placement: which nodes go back to float.

``fit`` hands :func:`~converter.passes.qdq._budget.fit_budget` a ``build`` that quantizes a
fresh copy of the float model with the same placement (placement is deterministic, so node
names match) minus the nodes to keep float, and the held-out batches calibration left out.
The kept nodes are then dropped from the real placement with their measured cost as reason.
With ``ray`` (``--ray auto|ADDRESS``) the sensitivity sweep runs in Ray tasks
(:class:`~converter.passes.qdq._budget_ray.RayEvaluations`): the same result, ``ray_tasks`` in the facts.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import onnx

from converter.errors import PassRefused
from converter.passes.qdq._budget import BudgetResult, Feeds, Metric, fit_budget
from converter.passes.qdq._budget_ray import RayEvaluations
from converter.passes.qdq._model_plan import ModelPlan, apply_plan, place_model
from converter.passes.qdq._placement import PlacementRules

_CURVE_POINTS = 24


@dataclass(frozen=True)
class Budget:
    metric: Metric
    target: float


def _builder(float_model: onnx.ModelProto, plan: ModelPlan, types: dict[str, int], rules: PlacementRules, scales: dict[str, float], model_dir: str | None):
    planned = {n.name for n in plan.nodes}

    def build(keep: frozenset[str]) -> onnx.ModelProto:
        copy = onnx.ModelProto()
        copy.CopyFrom(float_model)
        again = place_model(copy, types, rules)
        gone = {n.name for n in again.nodes if n.name not in planned or n.name in keep}
        again.drop(gone, dict.fromkeys(gone, "accuracy budget"))
        used = again.activation_tensors()
        apply_plan(copy, again, {t: scales[t] for t in used}, model_dir)
        return copy

    return build


def facts_of(result: BudgetResult) -> dict[str, Any]:
    curve = result.curve if len(result.curve) <= _CURVE_POINTS else result.curve[:: max(1, len(result.curve) // _CURVE_POINTS)] + result.curve[-1:]
    return {
        "metric": result.metric,
        "target": result.target,
        "all_quantized": round(result.all_quantized, 6),
        "achieved": round(result.achieved, 6),
        "met": result.met,
        "kept_float": {k: round(v, 6) for k, v in result.kept_float.items()},
        "curve": [[k, round(v, 6)] for k, v in curve],
        "evaluations": result.evaluations,
        "samples": result.samples,
        "seconds": round(result.seconds, 2),
        **({"ray_tasks": result.ray_tasks} if result.ray_tasks else {}),
        **({"notes": result.notes} if result.notes else {}),
    }


def fit(float_model: onnx.ModelProto, plan: ModelPlan, types: dict[str, int], rules: PlacementRules, scales: dict[str, float],
        heldout: list[Feeds], budget: Budget, model_dir: str | None, log: logging.Logger, ray: str | None = None) -> BudgetResult:
    """Measure, choose the nodes to keep float, and drop them from ``plan`` (each with its measured cost); ``ray``: the
    ``--ray`` address the sweep's evaluations run on."""
    build = _builder(float_model, plan, types, rules, scales, model_dir)
    names = [n.name for n in plan.nodes]
    try:
        with RayEvaluations(ray, log) if ray else nullcontext() as runner:
            result = fit_budget(float_model, build, names, lambda: iter(heldout), budget.target, budget.metric, log, runner=runner)
    except ValueError as exc:  # the model or data cannot be measured this way (e.g. top-1 of a scalar output)
        raise PassRefused(f"qdq accuracy budget: {exc}") from exc
    what = "cosine" if budget.metric == "cosine" else "top-1 agreement"
    reasons = {name: f"accuracy budget ({what} >= {budget.target}): quantizing it alone costs {cost:.4g} {what} on {result.samples} held-out samples"
               for name, cost in result.kept_float.items()}
    plan.drop(set(reasons), reasons)
    if result.met:
        log.info("qdq: accuracy budget met: %s %.4f (all quantized %.4f) with %d nodes kept float, %d evaluations",
                 what, result.achieved, result.all_quantized, len(result.kept_float), result.evaluations)
    else:
        log.warning("qdq: accuracy budget not met: best %s %.4f < %s with %d nodes kept float (all quantized %.4f)",
                    what, result.achieved, budget.target, len(result.kept_float), result.all_quantized)
    return result
