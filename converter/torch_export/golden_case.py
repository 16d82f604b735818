"""A golden case whose reference outputs are torch's, not a re-run of the exported graph.

The data sets are the verification's (same seeded inputs, one per checked size); the manifest
records the exported file as the model, torch as the reference and the export recipe, and uses
the export's fp32 tolerance (the other precisions keep the defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from converter.compare import DEFAULT_TOLERANCES, Tolerance
from converter.golden import DataSet, GoldenCase, record_case
from converter.model_io import sha256_of_files
from converter.torch_export.verify import VerifyReport


def record_torch_case(
    out_dir: Path, *, model_files: Sequence[Path], report: VerifyReport, input_names: Sequence[str], output_names: Sequence[str],
    tolerance: Tolerance, recipe: str, force: bool, reference: dict[str, Any],
) -> GoldenCase:
    data_sets = [DataSet({n: c.data.inputs[n] for n in input_names}, c.data.outputs, c.data.name) for c in report.checks]
    return record_case(
        out_dir, model_path=model_files[0], model_sha256=sha256_of_files(model_files), data_sets=data_sets,
        input_names=list(input_names), output_names=list(output_names), recipe=recipe, force=force,
        tolerances={**DEFAULT_TOLERANCES, "fp32": tolerance}, extra={"reference": {"source": "torch", **reference}},
    )
