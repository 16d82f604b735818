"""Every command's ``--json`` output is a ``converter.report/1`` document that validates against the shipped schema.

The schema (converter/reporting/report-1.schema.json) is checked as a JSON Schema itself, then each
command runs through the real CLI and its stdout is validated; the schema must also reject documents
that break it (so the test can fail).
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from converter import reporting
from tests.conftest import Cli


def _doc(proc) -> dict:
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    reporting.validate(doc)
    return doc


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(reporting.schema())
    assert reporting.schema()["$id"] == reporting.SCHEMA_ID == "converter.report/1"


def test_schema_rejects_broken_documents() -> None:
    good = reporting.document("check", {"model": "m.onnx", "backend": "ort", "findings": []})
    reporting.validate(good)
    for broken in (
        {**good, "schema": "converter.report/0"},
        {k: v for k, v in good.items() if k != "findings"},
        {**good, "findings": [{"rule": "x"}]},
        reporting.document("bench", {"artifact": "a", "backend": "ort", "results": [], "compare": None}),
    ):
        with pytest.raises(jsonschema.ValidationError):
            reporting.validate(broken)


def test_json_is_strict_and_finite() -> None:
    text = reporting.to_text(reporting.document("x", {"nan": float("nan"), "inf": float("-inf"), "t": (1, 2)}))
    assert json.loads(text)["nan"] is None and json.loads(text)["inf"] is None and "NaN" not in text


def test_every_command_prints_a_valid_document(cli: Cli, tiny_path: Path, tmp_path: Path) -> None:
    golden = tmp_path / "case"
    rec = _doc(cli("golden", "record", tiny_path, "--random-inputs", "--input-shapes", "x:2x4", "-o", golden, "--json"))
    assert rec["command"] == "golden record"

    conv = _doc(cli(tiny_path, "-p", "cleanup,fold_constants", "-b", "onnx", "-o", tmp_path / "a.onnx", "--golden", golden, "--json"))
    assert conv["command"] == "convert" and [p["name"] for p in conv["passes"]] == ["cleanup", "fold_constants"]
    assert conv["interface"]["before"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert conv["interface"]["after"]["outputs"][0]["name"] == "y"
    assert conv["artifact"]["manifest"]["source_model"] == str(tiny_path)
    hist = conv["golden"]["data_sets"]["test_data_set_0"]["outputs"][0]["error_histogram"]
    assert hist is not None and hist["exact"] + sum(hist["counts"]) == 6  # y is 2x3

    chk = _doc(cli("golden", "check", tmp_path / "a.onnx", golden, "--json"))
    assert chk["command"] == "golden check" and chk["passed"] is True and chk["artifact"]["backend"] == "onnx"

    q = tmp_path / "q.onnx"
    qconv = _doc(cli(tiny_path, "-p", "qdq", "--calib-random", "-b", "onnx", "-o", q, "--json"))
    assert any(p["name"] == "qdq" and p["facts"] for p in qconv["passes"])
    dbg = _doc(cli("debug", "accuracy", tiny_path, q, "--random", "4", "--json"))
    assert dbg["command"] == "debug accuracy" and dbg["tensors"]

    assert _doc(cli("inspect", tiny_path, "--json"))["nodes"] == 6
    assert _doc(cli("check", tiny_path, "--json"))["command"] == "check"
    for listing in ("passes", "backends", "plugins"):
        assert _doc(cli(listing, "--json"))["command"] == listing


def test_progress_never_reaches_stdout(cli: Cli, tiny_path: Path, tmp_path: Path) -> None:
    """--json stdout is one document even when progress lines are printed (stderr)."""
    proc = cli(tiny_path, "-p", "qdq", "--calib-random", "-b", "onnx", "-o", tmp_path / "q.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)
