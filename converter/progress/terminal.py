"""The reporters a terminal or a log gets: a live bar (rich) on a terminal, one line per step in a pipe.

On a terminal each step is a bar (or a spinner when its size is unknown) with its count, rate, elapsed
time and ETA; finished steps stay on screen with their time. In a pipe or a CI log each step of a second
or more prints one line when it ends, with its time, and long steps with a known size print a line every
``LineReporter.every`` seconds in between, so a stalled job shows where it is.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from converter.progress.api import Reporter, Task


def _amount(value: float, unit: str) -> str:
    text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    return f"{text} {unit}".strip()


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {s % 60:.0f} s"


def summary(task: Task) -> str:
    """``calibrate: 512/512 samples, 29.8 samples/s, 17.2 s``: a finished (or running) step in one line."""
    parts = [*_counts(task), _seconds(task.elapsed)]
    return f"{'  ' * task.depth}{task.name}: {', '.join(parts)}" + (" (failed)" if task.failed else "")


def _counts(task: Task) -> list[str]:
    """How far a step is: ``3/8 samples``, its rate, its note."""
    parts = []
    if task.total is not None:
        parts.append(f"{_amount(task.completed, '')}/{_amount(task.total, task.unit)}")
    elif task.completed:
        parts.append(_amount(task.completed, task.unit))
    if task.rate is not None and task.unit:
        parts.append(f"{task.rate:.1f} {task.unit}/s")
    if task.detail:
        parts.append(task.detail)
    return parts


class LineReporter(Reporter):
    """One line per step that finished, in ``min_seconds`` or more (and a line every ``every`` seconds on long
    counted steps): for pipes and CI logs. Quick steps print nothing, and a failed step leaves its line to the error
    message, so a usage error stays one line."""

    def __init__(self, stream: IO[str], prefix: str = "convert: ", every: float = 10.0, min_seconds: float = 1.0) -> None:
        self.stream, self.prefix, self.every, self.min_seconds = stream, prefix, every, min_seconds
        self._last: dict[int, float] = {}

    def _print(self, text: str) -> None:
        try:
            self.stream.write(self.prefix + text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is never worth failing the job
            pass

    def start(self, task: Task) -> None:
        self._last[id(task)] = task.started

    def update(self, task: Task) -> None:
        now = time.perf_counter()
        if task.total and now - self._last.get(id(task), now) >= self.every:
            self._last[id(task)] = now
            eta = ""
            if task.rate:
                eta = f", ETA {_seconds(max(task.total - task.completed, 0) / task.rate)}"
            self._print(summary(task) + eta)

    def finish(self, task: Task) -> None:
        self._last.pop(id(task), None)
        if task.elapsed >= self.min_seconds and not task.failed:  # a failure is told by the error line that follows
            self._print(summary(task))


class LiveReporter(Reporter):
    """rich's live progress display on the terminal's stderr."""

    def __init__(self, stream: IO[str], *, redirect_stdout: bool = False) -> None:
        """``redirect_stdout``: stdout is the same terminal; what the command prints goes above the bars (never set it
        when stdout is a file or a pipe: a report must not go to stderr)."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream, stderr=True),
            transient=False,
            redirect_stdout=redirect_stdout,
        )
        self._ids: dict[int, Any] = {}
        self._started = False

    def _info(self, task: Task) -> str:
        return ", ".join(_counts(task))

    def start(self, task: Task) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        self._ids[id(task)] = self._progress.add_task("  " * task.depth + task.name, total=task.total, completed=task.completed, info=self._info(task))

    def update(self, task: Task) -> None:
        tid = self._ids.get(id(task))
        if tid is not None:
            self._progress.update(tid, completed=task.completed, total=task.total, info=self._info(task))

    def finish(self, task: Task) -> None:
        tid = self._ids.pop(id(task), None)
        if tid is None:
            return
        info = self._info(task) + (" [red]failed" if task.failed else "")
        total = task.total if task.total is not None else max(task.completed, 1.0)
        self._progress.update(tid, total=total, completed=total if not task.failed else task.completed, info=info)
        self._progress.stop_task(tid)

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False



def reporter_for(stream: IO[str], *, quiet: bool = False) -> Reporter:
    """Nothing with ``quiet``; a live bar on a terminal; one line per step otherwise (pipes, CI logs, ``TERM=dumb``),
    for steps of at least ``$CONVERTER_PROGRESS_MIN_SECONDS`` (default 1)."""
    if quiet:
        return Reporter()
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty and os.environ.get("TERM", "") != "dumb":
        return LiveReporter(stream, redirect_stdout=_same_terminal(stream))
    try:
        min_seconds = float(os.environ.get(MIN_SECONDS_ENV, "1"))
    except ValueError:
        min_seconds = 1.0
    return LineReporter(stream, min_seconds=min_seconds)


def _same_terminal(stream: IO[str]) -> bool:
    """stdout is a terminal too, the one ``stream`` writes to (then the report prints above the bars)."""
    try:
        return sys.stdout.isatty() and os.ttyname(sys.stdout.fileno()) == os.ttyname(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


MIN_SECONDS_ENV = "CONVERTER_PROGRESS_MIN_SECONDS"
"""In a pipe, steps shorter than this many seconds print no line (default 1; 0 prints every step)."""
