"""The Python API: the README's example runs, each CLI subcommand and its function stay in step, and the API
behaves as the command does (same artifacts, same errors with the same exit codes, nothing left behind)."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import converter
from converter.cli import command_parser
from converter.convert_args import convert_parser
from converter.convert_job import GoldenFailed
from converter.errors import CheckFailed, ConverterError, UsageError
from converter.plugin_manager import load_plugins
from tests.conftest import ROOT

README = ROOT / "README.md"

COMMON = {"help", "json", "debug", "verbose", "quiet", "version"}
"""Flags about how a command prints, not what it does: no API parameter."""


def _readme_example() -> str:
    text = README.read_text()
    start = text.index("<!-- api-example -->")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None, "the README's API example block is missing"
    return block.group(1)


def test_readme_example_runs(rapid_model: Path, photo_feeds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(rapid_model, tmp_path / "model.onnx")
    shutil.copy(photo_feeds, tmp_path / "photos.npz")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_readme_example(), "README.md (api example)", "exec"), {})  # noqa: S102
    text = out.getvalue()
    assert "fold_constants" in text and "cosine" in text and "median" in text
    assert re.search(r"^2 model file not found", text, re.M) or re.search(r"^2 ", text, re.M), text
    assert (tmp_path / "model.ort.onnx").is_file() and (tmp_path / "model.int8.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".converter")) == []


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest not in COMMON and not a.dest.startswith("plugin_") and a.dest != argparse.SUPPRESS}


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(f"no subcommand {name}")


def _params(fn: Callable[..., object]) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD}


# CLI dest -> API parameter, where the names differ; None: a CLI-only flag, with the reason
RENAMED: dict[str, dict[str, str | None]] = {
    "convert": {},
    "golden record": {},
    "golden check": {"report": None},  # the page is the CLI's rendering of the result the API returns
    "export": {"tolerance_atol": "tolerance", "tolerance_rtol": "tolerance", "tolerance_cosine": "tolerance", "tolerance_top1": "tolerance",
               "then": None},  # --then is converter.convert() called after converter.export()
    "bench": {},
}
API_ONLY = {"plugins"}
"""API parameters with no flag: the loaded plugins (the CLI always uses the installed ones)."""


def _cli_parsers() -> dict[str, tuple[argparse.ArgumentParser, Callable[..., object]]]:
    plugins = load_plugins(entry_points_enabled=False)
    golden = command_parser(plugins.commands.get("golden")())
    return {
        "convert": (convert_parser(plugins), converter.convert),
        "golden record": (_sub(golden, "record"), converter.golden.record),
        "golden check": (_sub(golden, "check"), converter.golden.check),
        "export": (command_parser(plugins.commands.get("export")()), converter.export),
        "bench": (command_parser(plugins.commands.get("bench")()), converter.bench),
    }


@pytest.mark.parametrize("command", list(RENAMED))
def test_each_subcommand_and_its_function_stay_in_step(command: str) -> None:
    parser, fn = _cli_parsers()[command]
    renamed = RENAMED[command]
    cli = {renamed.get(d, d) for d in _dests(parser)} - {None}
    api = _params(fn) - API_ONLY
    assert not cli - api, f"convert {command} has flags its API function {fn.__name__}() lacks: {sorted(cli - api)}"
    missing = {p for p in api - cli if p not in {k for k, v in renamed.items() if v is None}}
    assert not missing, f"{fn.__name__}() has parameters 'convert {command}' lacks: {sorted(missing)}"


def test_plugin_flags_are_keyword_arguments(tiny_path: Path, tmp_path: Path) -> None:
    """--calib-random is calib_random=True; an unknown keyword is a usage error naming what exists."""
    out = converter.convert(tiny_path, "qdq", "onnx", output=tmp_path / "q.onnx", calib_random=True)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out.artifact.path)).graph.node)
    with pytest.raises(UsageError, match="unknown argument 'calib_dat'.*calib_data") as exc:
        converter.convert(tiny_path, "qdq", "onnx", output=tmp_path / "x.onnx", calib_dat="x.npz")
    assert exc.value.exit_code == 2


def test_pass_objects_give_the_artifact_pipeline_text_gives(tiny_path: Path, tmp_path: Path) -> None:
    text = converter.convert(tiny_path, "cleanup{sort=false},fold_constants", "onnx", output=tmp_path / "a.onnx")
    objs = converter.convert(tiny_path, [converter.passes.get("cleanup")(sort=False), converter.passes.get("fold_constants")()],
                             converter.plugins.get("onnx")(), output=tmp_path / "b.onnx")
    a, b = onnx.load(str(text.artifact.path)), onnx.load(str(objs.artifact.path))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert [r.name for r in objs.report.records] == ["cleanup", "fold_constants"]
    assert objs.artifact.manifest["pipeline"].startswith("cleanup{")
    with pytest.raises(UsageError, match="unknown option 'nope'"):
        converter.passes.get("qdq")(nope=1)
    with pytest.raises(UsageError, match="unknown pass 'qdqq'"):
        converter.passes.get("qdqq")


def test_in_memory_model_and_feeds(tiny_model: onnx.ModelProto, tmp_path: Path) -> None:
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("converter-api-*"))
    feeds = {"x": np.ones((2, 4), np.float32)}
    out = converter.convert(tiny_model, "cleanup", "onnx", output=tmp_path / "m.onnx", verify=True, inputs=feeds)
    assert out.report.records[0].verify is not None and bool(out.report.records[0].verify)
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("converter-api-*")) == before  # the private folders are gone


def test_errors_carry_exit_codes_and_outcomes(tiny_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConverterError) as missing:
        converter.convert(tmp_path / "nope.onnx", output=tmp_path / "o.onnx")
    assert missing.value.exit_code == 2
    case = converter.golden.record(tiny_path, tmp_path / "case", random_inputs=True, input_shapes="x:2x4")
    ref = case.path / "test_data_set_0" / "output_0.pb"
    t = onnx.load_tensor(str(ref))
    t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) + 1.0, t.name))
    ref.write_bytes(t.SerializeToString())
    with pytest.raises(GoldenFailed) as failed:
        converter.convert(tiny_path, "cleanup", "onnx", output=tmp_path / "g.onnx", golden=case.path, report=tmp_path / "r.html")
    assert failed.value.exit_code == 1 and failed.value.outcome.golden is not None and not failed.value.outcome.golden
    assert not (tmp_path / "g.onnx").exists() and (tmp_path / "r.html").is_file()  # the page shows why; no artifact
    result = converter.golden.check(converter.convert(tiny_path, "", "onnx", output=tmp_path / "h.onnx").artifact.path, case.path)
    assert not result and "FAIL" in result.table()
    assert issubclass(GoldenFailed, CheckFailed)


def test_bench_returns_the_document_fields(tiny_path: Path, tmp_path: Path) -> None:
    art = converter.convert(tiny_path, "", "onnx", output=tmp_path / "a.onnx").artifact.path
    run = converter.bench(art, batch=[1, 3], iterations=5, warmup=1)
    assert [r["batch"] for r in run.to_json()["results"]] == [1, 3] and "median" in run.table()


def test_import_is_cheap_and_lazy() -> None:
    import subprocess
    import sys

    code = "import sys, converter; print('onnxruntime' in sys.modules, 'converter.api' in sys.modules); converter.convert; print('converter.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]
