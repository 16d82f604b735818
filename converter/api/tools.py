"""``converter.export`` and ``converter.bench``: the ``export`` and ``bench`` subcommands as functions."""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from converter import reporting
from converter.api.objects import default_plugins
from converter.benchmark import BenchRun
from converter.benchmark import bench as run_bench
from converter.compare import Tolerance
from converter.plugin_manager import Plugins
from converter.torch_export.job import EXPORT_TOLERANCE, ExportOutcome, ExportRequest, run_export

PathLike = str | os.PathLike[str]


def _path(p: PathLike | None) -> Path | None:
    return None if p is None else Path(p)


def export(
    spec: str,
    inputs: Sequence[str],
    *,
    output: PathLike | None = None,
    weights: PathLike | None = None,
    exporter: str = "dynamo",
    opset: int | None = None,
    static: bool = False,
    dynamic: Sequence[str] = (),
    sizes: Sequence[str] = (),
    output_names: Sequence[str] | str | None = None,
    batches: Sequence[int] = (1, 4),
    seed: int = 0,
    tolerance: Tolerance | Mapping[str, float | None] | None = None,
    keep_failed: bool = False,
    golden: PathLike | None = None,
    force: bool = False,
    report: PathLike | None = None,
) -> ExportOutcome:
    """Export ``spec`` (``package.module:factory``) to ONNX and check it against torch; what ``convert export`` does.

    ``inputs`` are ``NAME:SHAPE:DTYPE[:LOW..HIGH]`` strings, one per ``forward()`` argument; ``tolerance``
    overrides the check's criteria (``{"atol": 1e-4, "min_cosine": None}``: None turns one off).
    Raises :class:`~converter.torch_export.job.ExportCheckFailed` (exit code 1) when the model does not match torch.
    """
    tol = tolerance if isinstance(tolerance, Tolerance) else dataclasses.replace(EXPORT_TOLERANCE, **dict(tolerance or {}))
    names = [n.strip() for n in output_names.split(",")] if isinstance(output_names, str) else (list(output_names) if output_names else None)
    recipe = ["convert", "export", spec, *(f"--input={i}" for i in inputs), f"--exporter={exporter}"]
    recipe += [f"--opset={opset}"] if opset is not None else []
    recipe += ["--static"] if static else []
    recipe += [f"--dynamic={d}" for d in dynamic] + ([f"--weights={weights}"] if weights else [])
    req = ExportRequest(
        spec=spec, inputs=list(inputs), output=_path(output), weights=_path(weights), opset=opset, exporter=exporter, static=static,
        batches=tuple(batches), seed=seed, tolerance=tol, output_names=names, golden=_path(golden), force=force, keep_failed=keep_failed,
        recipe=shlex.join(recipe), dynamic=list(dynamic), sizes=list(sizes),
    )
    page = _path(report)
    protected = [p for p in (req.weights,) if p is not None]
    reporting.check_report_path(page, protected)
    outcome = run_export(req)
    if page is not None:
        reporting.write_page(page, reporting.document("export", {"export": outcome.to_json()}), protected)
    return outcome


def bench(
    artifact: PathLike,
    *,
    batch: Sequence[int] | str | None = None,
    backend: str | None = None,
    warmup: int = 10,
    iterations: int | None = None,
    duration: float | None = None,
    threads: int | None = None,
    input_shapes: str | None = None,
    inputs: PathLike | None = None,
    seed: int = 0,
    compare: PathLike | None = None,
    report: PathLike | None = None,
    plugins: Plugins | None = None,
) -> BenchRun:
    """Latency (min, mean, median, p90, p99, max in ms) and throughput per batch size; what ``convert bench`` does.

    ``compare`` times a second artifact interleaved with the first; ``.to_json()`` is the ``bench``
    report document's fields, ``.table()`` the text the command prints.
    """
    return run_bench(
        Path(artifact), backend=backend, batch=batch if batch is None or isinstance(batch, str) else list(batch), warmup=warmup,
        iterations=iterations, duration=duration, threads=threads, input_shapes=input_shapes, inputs=_path(inputs), seed=seed,
        compare=_path(compare), report=_path(report), plugins=plugins or default_plugins(),
    )


__all__ = ["bench", "export"]
