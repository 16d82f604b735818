"""Run one golden check: convert the case's model with the check's passes and backend, compare.

The same flow as ``convert MODEL --pipeline P --backend B --golden CASE``: the artifact goes
into the item's own temporary folder, so items share nothing (``pytest -n`` safe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from converter.convert_job import ConvertRequest, GoldenFailed, convert
from converter.errors import BackendUnavailable, ConverterError
from converter.golden import CaseResult, load_case, recorded_files
from converter.model_io import sha256_of_files
from converter.pipeline_text import parse_step
from converter.pytest_golden.checks import Check
from converter.pytest_golden.failure import case_error, mismatch


def run_check(case_dir: Path, case_name: str, check: Check, plugins: Any, tmp: Path) -> CaseResult:
    """The passing result; a mismatch or a usage error raises :class:`GoldenFailure`, a missing backend skips."""
    try:
        case = load_case(case_dir)
        model = case.model_path()
        recorded = case.manifest.get("model", {}).get("sha256")
        if recorded and sha256_of_files(recorded_files(model)) != recorded:  # the model and its external data
            raise case_error(case_name, case_dir, check, f"{model} is not the model this case was recorded from (sha256 differs); "
                             "if it changed on purpose, re-record the references with --golden-update")
        suffix = plugins.backends.get(parse_step(check.backend).name).cls.suffix
        req = ConvertRequest(model=model, pipeline=check.passes, backend=check.backend, output=tmp / f"{case_dir.name}{suffix}",
                             golden=case_dir, precision=check.precision)
        outcome = convert(req, plugins)
    except GoldenFailed as exc:
        assert exc.outcome.golden is not None
        raise mismatch(case_dir, check, exc.outcome.golden) from None
    except BackendUnavailable as exc:
        pytest.skip(f"golden case '{case_name}' [{check.label()}]: {exc}")
    except ConverterError as exc:
        raise case_error(case_name, case_dir, check, str(exc)) from None
    assert outcome.golden is not None
    return outcome.golden
