"""Nothing lost, nothing leaked (issue: data loss through qdq's cache, kill safety), through the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from converter.staging import PREFIX
from tests.conftest import Cli


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(PREFIX))


def _one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert: error:"), res.stderr
    return lines[0]


@pytest.mark.parametrize("target", ["input", "output", "manifest", "folder"])
def test_qdq_cache_never_names_the_input_or_the_artifact(cli: Cli, tiny_path: Path, tmp_path: Path, target: str) -> None:
    """Regression: 'qdq{cache=tiny.onnx}' replaced the input model with a 43-byte TensorRT cache."""
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous artifact")
    cache = {"input": tiny_path, "output": out, "manifest": tmp_path / "out.onnx.manifest.json", "folder": tmp_path}[target]
    before = {p.name: _sha(p) for p in tmp_path.iterdir() if p.is_file()}
    res = cli(tiny_path, "-p", f"qdq{{cache={cache}}}", "--calib-random", "-b", "onnx", "-o", out)
    assert res.returncode == 2, res.stderr
    assert "calibration cache" in _one_line_error(res)
    assert {p.name: _sha(p) for p in tmp_path.iterdir() if p.is_file()} == before, "nothing changed on disk"
    assert not _leftovers(tmp_path)


def test_qdq_cache_refuses_to_overwrite_a_foreign_file(cli: Cli, tiny_path: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    res = cli(tiny_path, "-p", f"qdq{{cache={notes}}}", "--calib-random", "-b", "onnx", "-o", tmp_path / "q.onnx")
    assert res.returncode == 2 and "exists and is not a calibration cache" in _one_line_error(res)
    assert notes.read_text() == "my notes\n" and not (tmp_path / "q.onnx").exists()


def test_qdq_cache_is_written_only_when_the_run_succeeds(cli: Cli, tiny_path: Path, tmp_path: Path) -> None:
    # a golden case the int8 artifact cannot meet: every reference output negated
    golden = tmp_path / "golden"
    assert cli("golden", "record", tiny_path, "--random-inputs", "--input-shapes", "x:4x4", "-o", golden).returncode == 0
    out_pb = golden / "test_data_set_0" / "output_0.pb"
    t = onnx.TensorProto()
    t.ParseFromString(out_pb.read_bytes())
    arr = onnx.numpy_helper.to_array(t)
    out_pb.write_bytes(onnx.numpy_helper.from_array((-arr - 1).astype(np.float32), t.name).SerializeToString())
    cache = tmp_path / "calib.json"
    res = cli(tiny_path, "-p", f"qdq{{cache={cache}}}", "--calib-random", "-b", "onnx", "-o", tmp_path / "q.onnx", "--golden", golden)
    assert res.returncode == 1, res.stderr
    assert not cache.exists() and not (tmp_path / "q.onnx").exists() and not _leftovers(tmp_path)
    ok = cli(tiny_path, "-p", f"qdq{{cache={cache}}}", "--calib-random", "-b", "onnx", "-o", tmp_path / "q.onnx", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(cache.read_text())["format"] == "converter-calibration-cache"
    again = cli(tiny_path, "-p", f"qdq{{cache={cache}}}", "--calib-random", "-b", "onnx", "-o", tmp_path / "q2.onnx", "--json")
    assert json.loads(again.stdout)["passes"][0]["facts"]["cache"] == "reused"
    trt = tmp_path / "calib.cache"
    assert cli(tiny_path, "-p", f"qdq{{cache={trt}}}", "--calib-random", "-b", "onnx", "-o", tmp_path / "q3.onnx").returncode == 0
    assert trt.read_text().startswith("TRT-")
    assert not _leftovers(tmp_path)


SLOW_RUN = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from converter import cli, plugin_manager
    from converter.hookspecs import hookimpl
    from converter.plugins.onnx_file import OnnxFileBackend

    READY = Path(sys.argv[1])

    class SlowBackend(OnnxFileBackend):
        name = "slow"
        summary = "writes the artifact into staging, then waits to be killed"

        def emit(self, model, ctx):
            artifact = super().emit(model, ctx)
            READY.write_text(str(ctx.staging))
            time.sleep(60)
            return artifact

    class Slow:
        @hookimpl
        def converter_register_backends(self, registry):
            registry.add(SlowBackend)

    original = plugin_manager.load_plugins
    cli.load_plugins = lambda: original(extra={"slow": Slow()})
    sys.exit(cli.main(sys.argv[2:]))
''')


def _start_slow(tmp_path: Path, tiny_path: Path, out: Path) -> tuple[subprocess.Popen[str], Path]:
    script, ready = tmp_path / "slow_run.py", tmp_path / "ready"
    script.write_text(SLOW_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(ready), str(tiny_path), "-b", "slow", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the slow backend never started"
        time.sleep(0.05)
    staging = Path(ready.read_text())
    assert staging.is_dir() and (staging / "tiny.onnx").is_file() or any(staging.iterdir())
    return proc, staging


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_the_write_leaves_nothing(tiny_path: Path, tmp_path: Path, sig: signal.Signals, code: int) -> None:
    out_dir = tmp_path / "new" / "deeper"
    proc, staging = _start_slow(tmp_path, tiny_path, out_dir / "m.onnx")
    before = _sha(tiny_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert len(err.strip().splitlines()) == 1 and "nothing" in err
    assert not staging.exists() and not (tmp_path / "new").exists(), "staging folder and the folders the run created are gone"
    assert _sha(tiny_path) == before


def test_sigkill_leftovers_are_removed_by_the_next_run(cli: Cli, tiny_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    proc, staging = _start_slow(tmp_path, tiny_path, out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert staging.exists(), "SIGKILL cannot be handled: the folder stays until the next run"
    res = cli(tiny_path, "-b", "onnx", "-o", out)
    assert res.returncode == 0, res.stderr
    assert not staging.exists() and not _leftovers(tmp_path)
    foreign = tmp_path / f"{PREFIX}notours"
    foreign.mkdir()
    assert cli(tiny_path, "-b", "onnx", "-o", out).returncode == 0
    assert foreign.exists(), "a folder without our owner marker is never removed"


def test_manifest_that_does_not_match_its_artifact_is_refused(cli: Cli, tiny_path: Path, tmp_path: Path) -> None:
    """A kill between the renames leaves a new artifact beside an old manifest: the pair is refused on read."""
    out = tmp_path / "m.onnx"
    golden = tmp_path / "golden"
    assert cli("golden", "record", tiny_path, "--random-inputs", "--input-shapes", "x:2x4", "-o", golden).returncode == 0
    assert cli(tiny_path, "-b", "onnx", "-o", out).returncode == 0
    assert cli("golden", "check", out, golden).returncode == 0
    manifest = json.loads((tmp_path / "m.onnx.manifest.json").read_text())
    assert manifest["artifact_files"] == ["m.onnx"]
    model = onnx.load(str(out))
    model.producer_name = "a newer run"
    onnx.save_model(model, str(out))
    res = cli("golden", "check", out, golden)
    assert res.returncode == 2 and "does not match" in _one_line_error(res)


def test_golden_case_folders_get_normal_permissions(cli: Cli, tiny_path: Path, tmp_path: Path) -> None:
    case = tmp_path / "case"
    assert cli("golden", "record", tiny_path, "--random-inputs", "--input-shapes", "x:2x4", "-o", case).returncode == 0
    mask = os.umask(0)
    os.umask(mask)
    assert case.stat().st_mode & 0o777 == 0o777 & ~mask, oct(case.stat().st_mode)


def test_control_characters_from_a_model_are_escaped_when_printed(cli: Cli, tmp_path: Path) -> None:
    """A crafted model must not drive the terminal: escape sequences in names and metadata are printed escaped."""
    from tests.conftest import TINY_TEXT, parse

    model = parse(TINY_TEXT)
    model.producer_name = "evil\x1b]0;owned\x07\x1b[2J"
    onnx.save_model(model, str(tmp_path / "evil.onnx"))
    res = cli("inspect", tmp_path / "evil.onnx")
    assert res.returncode == 0 and "\x1b" not in res.stdout and "\\x1b]0;owned" in res.stdout
    bad = cli(tmp_path / "evil.onnx", "-p", "no\x1b[2Jsuch")
    assert bad.returncode == 2 and "\x1b" not in bad.stderr and "\\x1b" in bad.stderr
