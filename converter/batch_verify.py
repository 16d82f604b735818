"""Proof that a dynamic-batch model equals its batch-1 original: batch N == N stacked batch-1 runs.

The original (static batch) model runs on N seeded samples, one at a time; the
dynamic model runs once on the samples stacked along the batch dim; the outputs
must equal the batch-1 outputs stacked the same way.

Every input and output is stacked along its own batch dim (a recurrent state
``[layers, batch, hidden]`` along dim 1); an input without one (a scalar, a
table) gets the same value in every sample, an output without one must equal the
batch-1 output. The dims are given (``axes``, as the dynamic_batch pass knows
them) or read from the two models: for an input, the dim that is fixed in the
original and symbolic in the dynamic model (else its first symbolic dim); for an
output, the dim named like an input's batch dim (``batch``, ``batch*4``), else the
dim made symbolic, else its first symbolic dim; a scalar has none.
Tolerance: ``|dynamic - stacked| <= 1e-5 * max|stacked|`` per output (``rtol=0``),
cosine similarity >= 0.99999.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from converter.backend_api import TensorSpec
from converter.compare import Comparison, Tolerance, compare
from converter.errors import describe_exception
from converter.feeds import Feeds, seeded_feeds
from converter.graph_info import graph_inputs, graph_outputs
from converter.ort_session import make_session, run_session
from converter.text_table import table_lines

BATCH_TOLERANCE = Tolerance(atol=1e-5, rtol=0.0, min_cosine=0.99999, min_top1=None)
"""Max abs error <= 1e-5 times the output's scale (max |reference|); nothing relative per element."""


def _fixed(d: int | str | None) -> bool:
    return isinstance(d, int) and d > 0


def batch_axis(spec: TensorSpec) -> int | None:
    """The first dim that is not a fixed size, or None when every dim is fixed."""
    for i, d in enumerate(spec.shape):
        if not _fixed(d):
            return i
    return None


def _made_dynamic(before: TensorSpec | None, after: TensorSpec) -> int | None:
    """The first dim fixed in ``before`` and symbolic in ``after``."""
    if before is None or len(before.shape) != len(after.shape):
        return None
    return next((i for i, (a, b) in enumerate(zip(before.shape, after.shape)) if _fixed(a) and not _fixed(b)), None)


def infer_axes(original: onnx.ModelProto, dynamic: onnx.ModelProto) -> tuple[dict[str, int | None], dict[str, int | None]]:
    """Batch dims of the inputs (by the original's inputs) and outputs (by the dynamic model's) read from the two models."""
    dyn_in = {s.name: s for s in graph_inputs(dynamic)}
    in_axes: dict[str, int | None] = {}
    for s in graph_inputs(original):
        d = dyn_in.get(s.name)
        found = _made_dynamic(s, d) if d is not None else None
        in_axes[s.name] = found if found is not None else (batch_axis(d) if d is not None else None)
    params = {str(dyn_in[n].shape[ax]) for n, ax in in_axes.items() if ax is not None and n in dyn_in and isinstance(dyn_in[n].shape[ax], str)}
    orig_out = {s.name: s for s in graph_outputs(original)}
    out_axes: dict[str, int | None] = {}
    for s in graph_outputs(dynamic):
        named = next((i for i, d in enumerate(s.shape) if isinstance(d, str) and d.split("*")[0] in params), None)
        made = _made_dynamic(orig_out.get(s.name), s)
        out_axes[s.name] = named if named is not None else made if made is not None else (batch_axis(s) if s.shape else 0)
    return in_axes, out_axes


@dataclass
class BatchRun:
    """One batch size: the comparison of the dynamic run with the stacked batch-1 runs, or why it did not run."""

    batch: int
    comparison: Comparison | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.comparison is not None and bool(self.comparison)


@dataclass
class BatchCheck:
    runs: list[BatchRun]
    tolerance: Tolerance
    input_axes: dict[str, int | None] = field(default_factory=dict)
    output_axes: dict[str, int | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.runs) and all(r.passed for r in self.runs)

    @property
    def passed(self) -> bool:
        return bool(self)

    def failures(self) -> list[str]:
        out = []
        for r in self.runs:
            if r.error is not None:
                out.append(f"batch {r.batch}: {r.error}")
            elif r.comparison is not None and not r.comparison:
                for o in r.comparison.outputs:
                    if not o.passed:
                        out.append(f"batch {r.batch} output {o.name}: {'; '.join(o.problems)}")
        return out

    def table(self) -> str:
        head = ["batch", "output", "axis", "shape", "max_abs", "needed_atol", "cosine", "result"]
        rows: list[list[str]] = []
        for r in self.runs:
            if r.comparison is None:
                rows.append([str(r.batch), "-", "-", "-", "-", "-", "-", f"FAIL: {r.error}"])
                continue
            for o in r.comparison.outputs:
                axis = self.output_axes.get(o.name)
                rows.append([
                    str(r.batch), o.name, "-" if axis is None else str(axis), "x".join(map(str, o.shape)) or "scalar",
                    f"{o.max_abs:.3g}", f"{o.needed_atol:.3g}", f"{o.cosine:.7f}",
                    "ok" if o.passed else "FAIL: " + "; ".join(o.problems),
                ])
        lines = table_lines(head, rows)
        t = self.tolerance
        lines.append(f"batch N vs N stacked batch-1 runs: atol={t.atol} (x output scale) rtol={t.rtol} min_cosine={t.min_cosine}: {'passed' if self else 'FAILED'}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance.to_json(),
            "input_axes": dict(self.input_axes),
            "output_axes": dict(self.output_axes),
            "batches": [
                {"batch": r.batch, "passed": r.passed, "error": r.error, "outputs": None if r.comparison is None else r.comparison.to_json()["outputs"]}
                for r in self.runs
            ],
        }


def _old_batch(specs: Sequence[TensorSpec], axes: Mapping[str, int | None], shapes: Mapping[str, tuple[int, ...]]) -> int:
    for s in specs:
        ax = axes.get(s.name)
        if ax is not None:
            shape = shapes.get(s.name, s.shape)
            d = shape[ax] if ax < len(shape) else None
            return d if isinstance(d, int) and d > 0 else 1
    return 1


def _unrunnable(check: BatchCheck, batch_sizes: Sequence[int], which: str, exc: Exception) -> BatchCheck:
    text = f"ONNX Runtime cannot load {which}: {type(exc).__name__}: {describe_exception(exc)}"
    check.runs.extend(BatchRun(n, error=text) for n in batch_sizes)
    return check


def check_batch_stacking(
    original: onnx.ModelProto,
    dynamic: onnx.ModelProto,
    batch_sizes: Sequence[int] = (1, 2, 7),
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    tolerance: Tolerance = BATCH_TOLERANCE,
    axes: Mapping[str, int | None] | None = None,
) -> BatchCheck:
    """Run ``dynamic`` at each batch size and compare with stacked runs of ``original`` (see the module doc).

    ``input_shapes`` fixes other symbolic dims of the original's inputs (its batch stays as exported).
    ``axes`` gives the batch dim (or None) of inputs and outputs by name; the others are read from the models.
    Sample ``i`` uses seed ``seed + i``, so the samples differ and the result is reproducible.
    """
    overrides = dict(input_shapes or {})
    in_specs = graph_inputs(original)
    in_axes, out_axes = infer_axes(original, dynamic)
    for name, axis in (axes or {}).items():
        for found in (in_axes, out_axes):
            if name in found:
                found[name] = axis
    check = BatchCheck([], tolerance, in_axes, out_axes)
    per_sample = _old_batch(in_specs, in_axes, overrides)
    # one model at a time: the original runs every sample first and is released before the dynamic one loads
    # (a big model's weights are mapped once, not twice)
    try:
        orig_sess = make_session(original)
    except Exception as exc:  # reported in every run of the check, not swallowed
        return _unrunnable(check, batch_sizes, "the original model", exc)
    samples: list[tuple[Feeds, dict[str, np.ndarray]]] = []
    shared = seeded_feeds(in_specs, seed, overrides)
    needed = max((n // per_sample for n in batch_sizes if n % per_sample == 0), default=0)
    sample_error = ""
    try:
        while len(samples) < needed:
            feeds = seeded_feeds(in_specs, seed + len(samples), overrides)
            feeds.update({k: shared[k] for k, ax in in_axes.items() if ax is None})
            samples.append((feeds, run_session(orig_sess, feeds)))
    except Exception as exc:  # reported as the failure of each batch that needs this sample, not swallowed
        sample_error = f"the original model failed on a batch-{per_sample} sample: {type(exc).__name__}: {describe_exception(exc)}"
    del orig_sess
    try:
        dyn_sess = make_session(dynamic)
    except Exception as exc:  # reported in every run of the check, not swallowed
        return _unrunnable(check, batch_sizes, "the dynamic model", exc)
    for n in batch_sizes:
        if n % per_sample:
            check.runs.append(BatchRun(n, error=f"batch {n} is not a multiple of the original model's batch {per_sample}"))
            continue
        count = n // per_sample
        if len(samples) < count:
            check.runs.append(BatchRun(n, error=sample_error))
            continue
        used = samples[:count]
        stacked = {k: (v if in_axes[k] is None else np.concatenate([s[0][k] for s in used], axis=in_axes[k])) for k, v in used[0][0].items()}
        expected = {}
        for name, ax in out_axes.items():
            if name not in used[0][1]:
                continue
            if ax is not None and np.ndim(used[0][1][name]) <= ax:  # a scalar (or lower-rank) output has no batch dim
                out_axes[name] = ax = None
            expected[name] = used[0][1][name] if ax is None else np.concatenate([s[1][name] for s in used], axis=ax)
        try:
            actual = run_session(dyn_sess, stacked)
        except Exception as exc:  # reported as this batch's failure, not swallowed
            check.runs.append(BatchRun(n, error=f"the dynamic model failed at batch {n}: {type(exc).__name__}: {describe_exception(exc)}"))
            continue
        check.runs.append(BatchRun(n, compare(actual, expected, tolerance)))
    return check
