"""Steps and the reporter that shows them: what code that takes long calls, and what it calls.

Code that can take more than a second wraps its work in :func:`step` and advances the task it
gets; what is shown (a live bar, one line per step, or nothing) is the reporter's business,
chosen once by the program (the CLI installs one with :func:`use`). The default reporter shows
nothing, so library and API users see no output unless they ask for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class Task:
    """One step in progress: its name, how far it is, and when it started."""

    name: str
    total: float | None = None
    unit: str = ""
    completed: float = 0.0
    depth: int = 0
    detail: str = ""
    """A short note shown beside the step (``512 samples``, ``engine 12 MB``)."""
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    failed: bool = False
    _reporter: Reporter | None = field(default=None, repr=False)

    @property
    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started

    @property
    def rate(self) -> float | None:
        """Units per second so far (None before anything was done)."""
        return self.completed / self.elapsed if self.completed and self.elapsed > 0 else None

    def advance(self, amount: float = 1.0) -> None:
        self.completed += amount
        if self._reporter is not None:
            self._reporter.update(self)

    def end(self, *, failed: bool = False) -> None:
        """Finish a task started with :func:`begin` (callbacks that cannot use ``with``: TensorRT's progress monitor)."""
        if self.ended is None:
            self.failed = failed
            self.ended = time.perf_counter()
            if self._reporter is not None:
                self._reporter.finish(self)

    def update(self, *, completed: float | None = None, total: float | None = None, detail: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if detail is not None:
            self.detail = detail
        if self._reporter is not None:
            self._reporter.update(self)


class Reporter:
    """Shows tasks; this base shows nothing (the default, and ``--quiet``)."""

    def start(self, task: Task) -> None:
        """A step began."""

    def update(self, task: Task) -> None:
        """A step advanced (called often: keep it cheap)."""

    def finish(self, task: Task) -> None:
        """A step ended (``task.failed`` when it raised)."""

    def close(self) -> None:
        """The program is done with this reporter."""


_SILENT = Reporter()
_CURRENT: ContextVar[Reporter | None] = ContextVar("converter_progress", default=None)
_DEPTH: ContextVar[int] = ContextVar("converter_progress_depth", default=0)


def current() -> Reporter:
    """The reporter steps go to now."""
    return _CURRENT.get() or _SILENT


@contextmanager
def use(reporter: Reporter) -> Iterator[Reporter]:
    """Send the steps inside this block to ``reporter``; closes it at the end."""
    token = _CURRENT.set(reporter)
    try:
        yield reporter
    finally:
        _CURRENT.reset(token)
        reporter.close()


@contextmanager
def step(name: str, total: float | None = None, unit: str = "") -> Iterator[Task]:
    """A step of work: ``with step("calibrate", total=n, unit="samples") as t: ... t.advance(len(batch))``."""
    reporter = current()
    depth = _DEPTH.get()
    task = Task(name, total=total, unit=unit, depth=depth, _reporter=reporter)
    reporter.start(task)
    token = _DEPTH.set(depth + 1)
    try:
        yield task
    except BaseException:
        task.failed = True
        raise
    finally:
        _DEPTH.reset(token)
        task.ended = time.perf_counter()
        reporter.finish(task)


def begin(name: str, total: float | None = None, unit: str = "", depth: int | None = None) -> Task:
    """Start a task that :meth:`Task.end` finishes, for callback APIs; prefer :func:`step` where ``with`` fits."""
    reporter = current()
    task = Task(name, total=total, unit=unit, depth=_DEPTH.get() if depth is None else depth, _reporter=reporter)
    reporter.start(task)
    return task
