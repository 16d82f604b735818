"""The regression zoo: every case under golden/ is converted with each of its checks and must match."""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.convert_job import ConvertRequest, convert
from converter.golden import load_case
from converter.model_io import sha256_of_files
from converter.plugin_manager import load_plugins

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p.parent for p in GOLDEN.glob("*/manifest.json"))
DEFAULT_CHECKS = [{"passes": "infer_shapes,cleanup", "backend": "ort"}]


def _params() -> list:
    out = []
    for case_dir in CASES:
        case = load_case(case_dir)
        for check in case.manifest.get("checks", DEFAULT_CHECKS):
            out.append(pytest.param(case_dir, check, id=f"{case_dir.name}[{check['passes'] or 'no-passes'}@{check['backend']}]"))
    return out


def test_zoo_is_not_empty() -> None:
    assert len(CASES) >= 2


@pytest.mark.parametrize(("case_dir", "check"), _params())
def test_golden_case(case_dir: Path, check: dict, tmp_path: Path) -> None:
    case = load_case(case_dir)
    model = case.model_path()
    assert sha256_of_files([model]) == case.manifest["model"]["sha256"], f"{model} is not the model this case was recorded from"
    req = ConvertRequest(model=model, pipeline=check["passes"], backend=check["backend"], output=tmp_path / "artifact.onnx",
                         golden=case_dir, precision=check.get("precision"))
    outcome = convert(req, load_plugins(entry_points_enabled=False))
    assert outcome.golden is not None and outcome.golden, outcome.golden.table() if outcome.golden else "no golden result"
