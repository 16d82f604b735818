"""Run torch and ONNX Runtime on the same seeded inputs, at several batch sizes, and compare.

ONNX Runtime runs the exported file with graph optimizations off, so the check is about the
export; what a backend's optimizations do is the golden check's business (``--golden``/``--then``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from converter.compare import Comparison, Tolerance, compare
from converter.errors import ModelError, describe_exception
from converter.export.exporter import run_torch
from converter.export.inputs import InputSpec, sample_feeds
from converter.golden import DataSet
from converter.ort_session import session_options


@dataclass
class BatchCheck:
    batch: int
    seed: int
    comparison: Comparison
    data: DataSet

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "seed": self.seed, "inputs": {k: list(v.shape) for k, v in self.data.inputs.items()}, **self.comparison.to_json()}


@dataclass
class VerifyReport:
    checks: list[BatchCheck]

    def __bool__(self) -> bool:
        return all(bool(c.comparison) for c in self.checks)

    def failed(self) -> list[str]:
        return [f"batch {c.batch}: {', '.join(c.comparison.failed_outputs())}" for c in self.checks if not c.comparison]

    def table(self) -> str:
        lines = []
        for c in self.checks:
            lines.append(f"torch vs ONNX Runtime at batch {c.batch} (seed {c.seed}): {'PASS' if c.comparison else 'FAIL'}")
            lines.append(c.comparison.table())
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"passed": bool(self), "batches": [c.to_json() for c in self.checks]}


def open_session(path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(opt_level="disable"), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load the exported model: {describe_exception(exc)}") from exc


def run_ort(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = [i.name for i in sess.get_inputs()]
    unknown = [n for n in wanted if n not in feeds]
    if unknown:
        raise ModelError(f"the exported model has inputs no --input names: {', '.join(unknown)}")
    names = [o.name for o in sess.get_outputs()]
    try:
        return dict(zip(names, sess.run(names, {n: feeds[n] for n in wanted})))
    except Exception as exc:
        shapes = ", ".join(f"{n}{list(feeds[n].shape)}" for n in wanted)
        raise ModelError(f"ONNX Runtime fails to run the exported model on {shapes}: {describe_exception(exc)}") from exc


def verify(
    torch: Any, model: Any, path: Path, specs: Sequence[InputSpec], output_names: Sequence[str],
    batches: Sequence[int | None], seed: int, tolerance: Tolerance,
) -> VerifyReport:
    """Compare torch with ONNX Runtime at each batch (``None``: the shapes as written)."""
    sess = open_session(path)
    checks = []
    for i, batch in enumerate(batches):
        feeds = sample_feeds(specs, seed + i, batch)
        reference = dict(zip(output_names, run_torch(torch, model, specs, feeds)))
        actual = run_ort(sess, feeds)
        comparison = compare(actual, reference, tolerance, "fp32", names=list(output_names))
        checks.append(BatchCheck(specs[0].shape_at(batch)[0], seed + i, comparison, DataSet(feeds, reference, f"test_data_set_{i}")))
    return VerifyReport(checks)
