"""Progress: steps and reporters (unit), and what the CLI prints on stderr in a pipe, on a terminal, and with --quiet."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converter import progress
from converter.progress.terminal import LineReporter, LiveReporter
from tests.conftest import Cli


class _Recorder(progress.Reporter):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int, float]] = []

    def start(self, task: progress.Task) -> None:
        self.events.append(("start", task.name, task.depth, task.completed))

    def update(self, task: progress.Task) -> None:
        self.events.append(("update", task.name, task.depth, task.completed))

    def finish(self, task: progress.Task) -> None:
        self.events.append(("failed" if task.failed else "finish", task.name, task.depth, task.completed))


def test_steps_nest_count_and_mark_failures() -> None:
    rec = _Recorder()
    with progress.use(rec):
        with progress.step("outer"):
            with progress.step("inner", total=4, unit="samples") as t:
                t.advance(3)
                t.advance()
        with pytest.raises(ValueError), progress.step("broken"):
            raise ValueError("x")
    assert rec.events == [
        ("start", "outer", 0, 0), ("start", "inner", 1, 0), ("update", "inner", 1, 3), ("update", "inner", 1, 4),
        ("finish", "inner", 1, 4), ("finish", "outer", 0, 0), ("start", "broken", 0, 0), ("failed", "broken", 0, 0),
    ]
    assert isinstance(progress.current(), progress.Reporter) and progress.current() is not rec  # restored after use()


def test_without_a_reporter_steps_are_silent(capsys: pytest.CaptureFixture[str]) -> None:
    with progress.step("quiet", total=2) as t:
        t.advance(2)
    assert capsys.readouterr() == ("", "")


def test_line_reporter_prints_steps_over_the_threshold_with_counts_and_rate() -> None:
    out = io.StringIO()
    with progress.use(LineReporter(out, min_seconds=0.05, every=0.02)):
        with progress.step("fast"):
            pass
        with pytest.raises(KeyError), progress.step("slow but failed"):
            time.sleep(0.06)
            raise KeyError("x")
        with progress.step("calibrate", total=4, unit="samples") as t:
            for _ in range(4):
                time.sleep(0.03)
                t.advance()
    lines = out.getvalue().splitlines()
    assert not any("fast" in line or "failed" in line for line in lines)
    final = lines[-1]
    assert final.startswith("convert: calibrate: 4/4 samples, ") and "samples/s" in final and final.endswith(" ms")
    assert any("ETA" in line for line in lines[:-1])  # periodic lines while it ran


def test_live_reporter_draws_bars_on_a_terminal() -> None:
    out = io.StringIO()
    reporter = LiveReporter(out)
    reporter._progress.console.force_terminal = True  # noqa: SLF001  (StringIO is no terminal)
    with progress.use(reporter), progress.step("calibrate", total=8, unit="samples") as t:
        t.advance(8)
    text = out.getvalue()
    assert "calibrate" in text and "8/8 samples" in text


def test_reporter_for_picks_by_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm")
    assert type(progress.reporter_for(io.StringIO(), quiet=True)) is progress.Reporter
    assert isinstance(progress.reporter_for(io.StringIO()), LineReporter)
    assert isinstance(progress.reporter_for(Tty()), LiveReporter)
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(progress.reporter_for(Tty()), LineReporter)


def test_cli_in_a_pipe_prints_one_line_per_step_on_stderr(cli: Cli, tiny_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERTER_PROGRESS_MIN_SECONDS", "0")
    proc = cli(tiny_path, "-p", "cleanup,qdq", "--calib-random", "-b", "onnx", "-o", tmp_path / "q.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)  # stdout: the document alone
    steps = [line.split(":")[1].strip() for line in proc.stderr.splitlines() if line.startswith("convert: ")]
    for expected in ("load model", "check model", "pass cleanup", "calibrate", "pass qdq", "emit (onnx)"):
        assert expected in steps, proc.stderr
    quiet = cli(tiny_path, "-p", "cleanup", "-b", "onnx", "-o", tmp_path / "c.onnx", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_cli_on_a_terminal_draws_live_progress(tiny_path: Path, tmp_path: Path) -> None:
    """stderr on a pseudo-terminal: rich's live display (cursor control codes), stdout untouched."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "converter.cli", str(tiny_path), "-p", "cleanup,qdq", "--calib-random", "-b", "onnx",
                             "-o", str(tmp_path / "q.onnx"), "--json"], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    stdout, _ = proc.communicate(timeout=60)
    os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err
    json.loads(stdout)
    assert "\x1b[" in err and "pass qdq" in err and "calibrate" in err
