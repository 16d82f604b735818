"""A golden check that cannot fail is refused: no reference outputs, malformed tolerances, malformed layout.

Every case here is a real case recorded by ``convert golden record`` and then damaged; ``convert
golden check ARTIFACT CASE`` must exit 2 with one ``convert: error:`` line naming what is wrong,
instead of passing (nothing compared, a looser policy) or crashing (exit 4).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

_SCRIPT = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "convert"
CONVERT = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "converter.cli"]


def _convert(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CONVERT, *map(str, args)], check=False, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-output model and a case recorded from it, which checks clean (exit 0)."""
    root = tmp_path_factory.mktemp("golden-safety")
    w = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y1"]), helper.make_node("Relu", ["x"], ["y2"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2, 4]), helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 4])], [w])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(root / "m.onnx"))
    rec = _convert("golden", "record", "m.onnx", "--random-inputs", "-o", "case", cwd=root)
    assert rec.returncode == 0, rec.stderr
    ok = _convert("golden", "check", "m.onnx", "case", cwd=root)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    return root


@pytest.fixture
def work(recorded: Path, tmp_path: Path) -> Path:
    shutil.copy(recorded / "m.onnx", tmp_path / "m.onnx")
    shutil.copytree(recorded / "case", tmp_path / "case")
    return tmp_path


def _manifest(work: Path) -> dict[str, Any]:
    return json.loads((work / "case" / "manifest.json").read_text())


def _write_manifest(work: Path, manifest: Any) -> None:
    (work / "case" / "manifest.json").write_text(json.dumps(manifest))


def _refused(work: Path, *needles: str, extra: tuple[str, ...] = ()) -> str:
    proc = _convert("golden", "check", "m.onnx", "case", *extra, cwd=work)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert len(lines) == 1 and lines[0].startswith("convert: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- (1) no reference outputs ---------------------------------------------------------------------

def test_case_without_output_files_is_refused(work: Path) -> None:
    for f in (work / "case" / "test_data_set_0").glob("output_*.pb"):
        f.unlink()
    line = _refused(work, "test_data_set_0")
    assert "no reference outputs" in line


def test_data_set_without_outputs_among_others_is_refused(work: Path) -> None:
    second = work / "case" / "test_data_set_1"
    shutil.copytree(work / "case" / "test_data_set_0", second)
    for f in second.glob("output_*.pb"):
        f.unlink()
    _refused(work, "test_data_set_1", "no reference outputs")


def test_manifest_without_outputs_and_no_files_is_refused(work: Path) -> None:
    m = _manifest(work)
    m["outputs"] = []
    _write_manifest(work, m)
    for f in (work / "case" / "test_data_set_0").glob("output_*.pb"):
        f.unlink()
    _refused(work, "no reference outputs")


# --- (3) outputs the manifest lists without a file; bad data-set folders ----------------------------

def test_one_missing_output_file_is_refused(work: Path) -> None:
    (work / "case" / "test_data_set_0" / "output_1.pb").unlink()
    _refused(work, "'y2'", "test_data_set_0")


def test_manifest_lists_an_output_without_a_file(work: Path) -> None:
    m = _manifest(work)
    m["outputs"] = [*m["outputs"], "logits"]
    _write_manifest(work, m)
    _refused(work, "'logits'", "test_data_set_0")


@pytest.mark.parametrize("suffix", ["x", "final", "1a", ""])
def test_data_set_folder_without_a_number_is_refused(work: Path, suffix: str) -> None:
    shutil.copytree(work / "case" / "test_data_set_0", work / "case" / f"test_data_set_{suffix}")
    _refused(work, f"test_data_set_{suffix}")


# --- (2) tolerances and manifest types ------------------------------------------------------------

BAD_TOLERANCES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "string_policy": ({"fp32": "loose"}, ("fp32",)),
    "string_value": ({"fp32": {"atol": "x"}}, ("fp32", "atol")),
    "unknown_key": ({"fp32": {"atl": 1e-5, "rtol": 1e-4, "min_cosine": 0.99999, "min_top1": 1.0}}, ("fp32", "atl")),
    "negative": ({"fp32": {"atol": -1.0}}, ("fp32", "atol")),
    "bool": ({"fp32": {"min_cosine": True}}, ("fp32", "min_cosine")),
    "list_value": ({"fp32": {"rtol": [1e-4]}}, ("fp32", "rtol")),
    "null_policy": ({"fp32": None}, ("fp32",)),
    "list_policy": ({"fp32": [1e-5, 1e-4]}, ("fp32",)),
    "tolerances_string": ("loose", ("tolerances",)),
    "tolerances_list": ([{"atol": 1e-5}], ("tolerances",)),
    "unknown_precision": ({"fp23": {"atol": 1e-5}}, ("fp23",)),
    "cosine_above_one": ({"fp32": {"min_cosine": 1.5}}, ("fp32", "min_cosine")),
    "top1_above_one": ({"fp32": {"min_top1": 2}}, ("fp32", "min_top1")),
    "everything_off": ({"fp32": {"atol": None, "rtol": None, "min_cosine": None, "min_top1": None}}, ("fp32",)),
}


@pytest.mark.parametrize("kind", list(BAD_TOLERANCES))
def test_bad_tolerance_is_refused(work: Path, kind: str) -> None:
    tolerances, needles = BAD_TOLERANCES[kind]
    m = _manifest(work)
    m["tolerances"] = tolerances
    _write_manifest(work, m)
    _refused(work, *needles)


@pytest.mark.parametrize(("text", "key"), [("NaN", "atol"), ("Infinity", "rtol"), ("-Infinity", "min_cosine")])
def test_non_finite_tolerance_is_refused(work: Path, text: str, key: str) -> None:
    """Python's json reads NaN and Infinity: a NaN atol would pass everything (no comparison with NaN is true)."""
    m = _manifest(work)
    m["tolerances"]["fp32"][key] = "@@"
    (work / "case" / "manifest.json").write_text(json.dumps(m).replace('"@@"', text))
    _refused(work, "fp32", key)


def test_bad_tolerance_of_the_checked_precision_int8(work: Path) -> None:
    m = _manifest(work)
    m["tolerances"]["int8"] = {"min_cosine": "0.98"}
    _write_manifest(work, m)
    _refused(work, "int8", "min_cosine", extra=("--precision", "int8"))


MANIFEST_EDITS: dict[str, tuple[Callable[[dict[str, Any]], Any], tuple[str, ...]]] = {
    "list": (lambda m: [m], ("manifest",)),
    "string": (lambda m: "golden", ("manifest",)),
    "outputs_string": (lambda m: {**m, "outputs": "y1"}, ("outputs",)),
    "outputs_number": (lambda m: {**m, "outputs": 5}, ("outputs",)),
    "outputs_not_names": (lambda m: {**m, "outputs": ["y1", 2]}, ("outputs",)),
    "outputs_duplicate": (lambda m: {**m, "outputs": ["y1", "y1"]}, ("outputs", "y1")),
    "inputs_mapping": (lambda m: {**m, "inputs": {"x": 0}}, ("inputs",)),
    "format_string": (lambda m: {**m, "format": "1"}, ("format",)),
    "format_future": (lambda m: {**m, "format": 99}, ("format",)),
}


@pytest.mark.parametrize("kind", list(MANIFEST_EDITS))
def test_malformed_manifest_is_refused(work: Path, kind: str) -> None:
    edit, needles = MANIFEST_EDITS[kind]
    _write_manifest(work, edit(_manifest(work)))
    _refused(work, *needles)
