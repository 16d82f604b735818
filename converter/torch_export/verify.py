"""Run torch and ONNX Runtime on the same seeded inputs, at several sizes of the dynamic axes, and compare.

ONNX Runtime runs the exported file with graph optimizations off, so the check is about the
export; what a backend's optimizations do is the golden check's business (``--golden``/``--then``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from converter.compare import Comparison, Tolerance, compare
from converter.errors import ModelError, describe_exception
from converter.golden import DataSet
from converter.ort_session import session_options
from converter.torch_export.dynamic import DynamicAxes, sizes_text
from converter.torch_export.exporter import run_torch
from converter.torch_export.inputs import InputSpec, sample_feeds


@dataclass
class SizeCheck:
    """One run of both: ``sizes`` of the dynamic axes (empty: static shapes), ``batch`` dim 0 of the first input."""

    batch: int
    sizes: dict[str, int]
    seed: int
    comparison: Comparison
    data: DataSet

    @property
    def label(self) -> str:
        return sizes_text(self.sizes) if self.sizes else f"batch {self.batch}"

    def to_json(self) -> dict[str, Any]:
        inputs = {k: list(v.shape) for k, v in self.data.inputs.items()}
        return {"batch": self.batch, "sizes": self.sizes, "seed": self.seed, "inputs": inputs, **self.comparison.to_json()}


@dataclass
class VerifyReport:
    checks: list[SizeCheck]

    def __bool__(self) -> bool:
        return all(bool(c.comparison) for c in self.checks)

    def failed(self) -> list[str]:
        return [f"{c.label}: {', '.join(c.comparison.failed_outputs())}" for c in self.checks if not c.comparison]

    def table(self) -> str:
        lines = []
        for c in self.checks:
            lines.append(f"torch vs ONNX Runtime at {c.label} (seed {c.seed}): {'PASS' if c.comparison else 'FAIL'}")
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
    dyn: DynamicAxes, points: Sequence[Mapping[str, int]], seed: int, tolerance: Tolerance,
) -> VerifyReport:
    """Compare torch with ONNX Runtime at each point (sizes of ``dyn``'s symbols; ``{}``: the shapes as written)."""
    sess = open_session(path)
    checks = []
    for i, sizes in enumerate(points):
        feeds = sample_feeds(specs, seed + i, dyn.shapes(specs, sizes))
        try:
            reference = dict(zip(output_names, run_torch(torch, model, specs, feeds)))
        except ModelError as exc:
            if not sizes:
                raise
            raise ModelError(f"{exc} (the check at {sizes_text(sizes)}; --sizes SYMBOL=A,B or --batches choose the sizes checked)") from exc
        actual = run_ort(sess, feeds)
        comparison = compare(actual, reference, tolerance, "fp32", names=list(output_names))
        batch = int(feeds[specs[0].name].shape[0])
        checks.append(SizeCheck(batch, dict(sizes), seed + i, comparison, DataSet(feeds, reference, f"test_data_set_{i}")))
    return VerifyReport(checks)
