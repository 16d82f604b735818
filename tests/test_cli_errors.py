"""Bad input: exit 2 (3 for an unavailable backend), one line on stderr, no traceback, input untouched, nothing written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import Cli


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _assert_one_line_error(res, code: int, pattern: str) -> None:  # type: ignore[no-untyped-def]
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("convert: error: ")
    assert "Traceback" not in res.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]


CASES = [
    ("missing", ["{tmp}/nope.onnx"], "model file not found"),
    ("text", ["{text}"], "not a valid ONNX model|does not contain an ONNX graph"),
    ("truncated", ["{trunc}"], "not a valid ONNX model"),
    ("unknown pass", ["{model}", "-p", "infer_shapes,frobnicate"], "unknown pass 'frobnicate'; available: .*cleanup.*infer_shapes"),
    ("unknown option", ["{model}", "-p", "cleanup{{sorting=false}}"], "pass 'cleanup': unknown option 'sorting'; valid options: dead_nodes, identity, initializers, sort"),
    ("bad option value", ["{model}", "-p", "cleanup{{sort=perhaps}}"], "not a boolean"),
    ("unknown backend", ["{model}", "-b", "tflite"], "unknown backend 'tflite'; available: onnx, ort, tensorrt"),
    ("output is input", ["{model}", "-o", "{model}"], "is the input file"),
    ("bad pipeline", ["{model}", "-p", "cleanup{{sort=false"], "unclosed brace"),
    ("unknown flag", ["{model}", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ("bad inputs file", ["{model}", "--verify", "--inputs", "{text}"], "not a readable .npz"),
]


@pytest.mark.parametrize(("name", "argv", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2(cli: Cli, tmp_path: Path, tiny_path: Path, name: str, argv: list[str], pattern: str) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("these are my notes, not a model\n")
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(tiny_path.read_bytes()[:-40])
    before = {p: _digest(p) for p in (tiny_path, text, trunc)}
    args = [a.format(tmp=tmp_path, text=text, trunc=trunc, model=tiny_path) for a in argv]
    work = tmp_path / "work"
    work.mkdir()
    res = cli(*args, cwd=work)
    _assert_one_line_error(res, 2, pattern)
    assert {p: _digest(p) for p in before} == before, "an input file changed"
    assert list(work.iterdir()) == [], "a failed run wrote something"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["notes.onnx", "trunc.onnx", "tiny.onnx", "work"])


def test_debug_flag_shows_traceback(cli: Cli, tmp_path: Path) -> None:
    res = cli(tmp_path / "nope.onnx", "--debug")
    assert res.returncode == 2 and "Traceback" in res.stderr


def test_tensorrt_backend_unavailable_exits_3_and_writes_nothing(cli: Cli, tmp_path: Path, tiny_path: Path) -> None:
    res = cli(tiny_path, "-p", "infer_shapes,cleanup", "-b", "tensorrt", "-o", tmp_path / "m.engine", cwd=tmp_path)
    _assert_one_line_error(res, 3, "backend 'tensorrt' is unavailable: (tensorrt is not installed|no CUDA device)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_missing_execution_provider_exits_3(cli: Cli, tmp_path: Path, tiny_path: Path) -> None:
    res = cli(tiny_path, "-b", "ort{providers=[CUDAExecutionProvider]}", "-o", tmp_path / "m.onnx")
    _assert_one_line_error(res, 3, "execution provider CUDAExecutionProvider is not in this onnxruntime build")


def test_invalid_input_model_names_the_checker(cli: Cli, tmp_path: Path) -> None:
    import onnx.parser

    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, float[4, 5] w) => (float[2, 5] y) { y = MatMul(x, w) }""")
    p = tmp_path / "bad.onnx"
    onnx.save_model(m, str(p))
    res = cli(p, "-o", tmp_path / "out.onnx")
    _assert_one_line_error(res, 2, "fails the ONNX checker: .*--no-check")


def test_ort_provider_options_are_validated_and_recorded(cli: Cli, tmp_path: Path, tiny_path: Path) -> None:
    bad = cli(tiny_path, "-b", "ort{provider_options=CUDAExecutionProvider.device_id=0}", "-o", tmp_path / "m.onnx")
    _assert_one_line_error(bad, 2, "is for CUDAExecutionProvider, which is not in providers")
    # ONNX Runtime ignores provider options it does not know; we refuse them (the CPU provider takes none)
    unknown = cli(tiny_path, "-b", "ort{provider_options=CPUExecutionProvider.arena_extend_strategy=kSameAsRequested}", "-o", tmp_path / "m.onnx")
    _assert_one_line_error(unknown, 2, "CPUExecutionProvider has no option 'arena_extend_strategy'")
    assert not (tmp_path / "m.onnx").exists()
    ok = cli(tiny_path, "-b", "ort", "-o", tmp_path / "m.onnx")
    assert ok.returncode == 0, ok.stderr
    import json

    manifest = json.loads((tmp_path / "m.onnx.manifest.json").read_text())
    assert manifest["provider_options"] == [{}] and manifest["providers"] == ["CPUExecutionProvider"]
