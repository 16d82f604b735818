"""Compare outputs against references, per output, with tolerances per precision.

A :class:`Comparison` is true when every output passes; its table says, for each
output, the errors seen and the tolerance that would have been needed.

Elementwise rule: ``|actual - ref| <= atol * scale + rtol * |ref|`` where
``scale = max |ref|`` of that output (1 when the output is all zeros), so
``atol`` is relative to the output's scale and one policy fits logits and
probabilities alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from converter.pass_api import Precision
from converter.text_table import table_lines


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one precision. ``None`` turns a criterion off."""

    atol: float | None = 1e-5
    rtol: float | None = 1e-4
    min_cosine: float | None = 0.9999
    min_top1: float | None = None

    def to_json(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Tolerance:
        return cls(**{k: (None if d.get(k) is None else float(d[k])) for k in ("atol", "rtol", "min_cosine", "min_top1") if k in d})


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5, rtol=1e-4, min_cosine=0.99999, min_top1=1.0),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999, min_top1=0.99),
    "int8": Tolerance(atol=None, rtol=None, min_cosine=0.98, min_top1=0.9),
}


@dataclass
class OutputComparison:
    name: str
    shape: tuple[int, ...]
    passed: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    cosine: float = 1.0
    top1: float | None = None
    top5: float | None = None
    needed_atol: float = 0.0
    """Smallest scaled atol that passes with the configured rtol."""
    problems: list[str] = field(default_factory=list)
    error_histogram: dict[str, Any] | None = None
    """|actual - reference| of the finite values: ``exact`` (count of zero errors), log-spaced ``edges``, ``counts``."""


@dataclass
class Comparison:
    outputs: list[OutputComparison]
    tolerance: Tolerance
    precision: str

    def __bool__(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def passed(self) -> bool:
        return bool(self)

    def failed_outputs(self) -> list[str]:
        return [o.name for o in self.outputs if not o.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "precision": self.precision,
            "tolerance": self.tolerance.to_json(),
            "outputs": [{**asdict(o), "shape": list(o.shape)} for o in self.outputs],
        }

    def table(self) -> str:
        head = ["output", "shape", "max_abs", "max_rel", "cosine", "top1", "needed_atol", "result"]
        rows = []
        for o in self.outputs:
            rows.append([
                o.name,
                "x".join(map(str, o.shape)) or "scalar",
                f"{o.max_abs:.3g}",
                f"{o.max_rel:.3g}",
                f"{o.cosine:.6f}",
                "-" if o.top1 is None else f"{o.top1:.3f}",
                f"{o.needed_atol:.3g}",
                "ok" if o.passed else "FAIL: " + "; ".join(o.problems),
            ])
        lines = table_lines(head, rows)
        tol = self.tolerance
        lines.append(f"tolerance ({self.precision}): atol={tol.atol} (x output scale) rtol={tol.rtol} min_cosine={tol.min_cosine} min_top1={tol.min_top1}")
        return "\n".join(lines)


def _topk_agreement(actual: np.ndarray, ref: np.ndarray, k: int) -> float:
    # NaN ranks lowest in both (argmax and argsort disagree about NaN otherwise)
    actual = np.where(np.isnan(actual), -np.inf, actual)
    ref = np.where(np.isnan(ref), -np.inf, ref)
    ref_top = np.argmax(ref, axis=-1)
    act_topk = np.argsort(-actual, axis=-1)[..., :k]
    return float(np.mean(np.any(act_topk == ref_top[..., None], axis=-1)))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


HISTOGRAM_BINS = 24


def error_histogram(diff: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts of absolute errors in log-spaced bins from the smallest non-zero error (at least 1e-7 of the largest)."""
    positive = diff[diff > 0]
    exact = int(diff.size - positive.size)
    if positive.size == 0:
        return {"exact": exact, "edges": [], "counts": []}
    hi = float(positive.max())
    lo = max(float(positive.min()), hi * 1e-7)
    if lo >= hi:
        edges = np.array([lo * 0.5, hi * 1.5])
    else:
        edges = np.geomspace(lo, hi, bins + 1)
        short = np.array([float(f"{e:.4g}") for e in edges])
        if np.all(np.diff(short) > 0):  # 4 digits keep reports small; unless the range is that narrow
            edges = np.concatenate([[min(short[0], lo)], short[1:-1], [max(short[-1], hi)]])
    counts, _ = np.histogram(np.clip(positive, edges[0], edges[-1]), bins=edges)
    return {"exact": exact, "edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def compare_output(name: str, actual: np.ndarray, ref: np.ndarray, tol: Tolerance) -> OutputComparison:
    actual, ref = np.asarray(actual), np.asarray(ref)
    if actual.shape != ref.shape:
        return OutputComparison(name, tuple(ref.shape), False, math.inf, math.inf, 0.0, problems=[f"shape {list(actual.shape)} != reference {list(ref.shape)}"])
    res = OutputComparison(name, tuple(ref.shape), True)
    if ref.size == 0:
        return res
    if ref.dtype.kind not in "fc":  # integer / bool outputs (argmax, masks): count disagreements
        agree = float(np.mean(actual == ref))
        res.top1 = agree
        need = 1.0 if tol.min_top1 is None else tol.min_top1
        if agree < need:
            res.passed = False
            res.problems.append(f"{(1 - agree) * 100:.2f}% of values differ")
        return res
    a = actual.astype(np.float64).ravel()
    r = ref.astype(np.float64).ravel()
    nan_a, nan_r = np.isnan(a), np.isnan(r)
    if np.any(nan_a != nan_r):
        res.passed = False
        res.problems.append(f"NaN in {int(np.sum(nan_a & ~nan_r))} values the reference has finite")
    inf_a, inf_r = np.isinf(a), np.isinf(r)
    same_inf = inf_a & inf_r & (np.sign(a) == np.sign(r))  # a masked -inf in both agrees
    odd_inf = (inf_a | inf_r) & ~same_inf & ~(nan_a | nan_r)
    if np.any(odd_inf):
        res.passed = False
        res.problems.append(f"inf in {int(np.sum(odd_inf))} values where the reference differs")
    finite = ~(nan_a | nan_r | inf_a | inf_r)
    a, r = a[finite], r[finite]
    if a.size == 0:
        return res
    diff = np.abs(a - r)
    scale = float(np.max(np.abs(r))) or 1.0
    res.max_abs = float(np.max(diff))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(np.abs(r) > 0, diff / np.abs(r), np.where(diff > 0, np.inf, 0.0))
    res.max_rel = float(np.max(rel))
    res.cosine = _cosine(a, r)
    res.error_histogram = error_histogram(diff)
    rtol = tol.rtol or 0.0
    res.needed_atol = float(max(0.0, np.max(diff - rtol * np.abs(r)) / scale))
    if tol.atol is not None or tol.rtol is not None:
        allowed = (tol.atol or 0.0) * scale + rtol * np.abs(r)
        bad = int(np.sum(diff > allowed))
        if bad:
            res.passed = False
            res.problems.append(f"{bad} of {diff.size} values beyond tolerance (needs atol {res.needed_atol:.3g})")
    if tol.min_cosine is not None and res.cosine < tol.min_cosine:
        res.passed = False
        res.problems.append(f"cosine {res.cosine:.6f} < {tol.min_cosine}")
    if ref.ndim == 2 and ref.shape[1] >= 2:  # class scores: [batch, classes]
        res.top1 = _topk_agreement(actual, ref, 1)
        if ref.shape[1] >= 5:
            res.top5 = _topk_agreement(actual, ref, 5)
        if tol.min_top1 is not None and res.top1 < tol.min_top1:
            res.passed = False
            res.problems.append(f"top-1 agreement {res.top1:.3f} < {tol.min_top1}")
    return res


def compare(
    actual: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    tolerance: Tolerance | None = None,
    precision: Precision | str = "fp32",
    names: Sequence[str] | None = None,
) -> Comparison:
    """Compare every reference output (or ``names``); a missing output fails."""
    tol = tolerance or DEFAULT_TOLERANCES[precision]
    results = []
    for name in names or list(reference):
        if name not in actual:
            results.append(OutputComparison(name, tuple(np.shape(reference[name])), False, problems=["output missing"]))
            continue
        results.append(compare_output(name, actual[name], reference[name], tol))
    return Comparison(results, tol, str(precision))
