"""Progress on long work: steps, and the reporters that show them on stderr.

    api.py       Task, Reporter (shows nothing), step(), begin() (callbacks), use(), current()
    terminal.py  LiveReporter (rich, on a terminal), LineReporter (pipes, CI logs), reporter_for()

Code that can take more than a second: ``with progress.step("calibrate", total=n, unit="samples") as t:``
and ``t.advance(k)``. The CLI installs a reporter for the whole command; stdout is never written.
"""

from __future__ import annotations

from converter.progress.api import Reporter, Task, begin, current, step, use
from converter.progress.terminal import LineReporter, LiveReporter, reporter_for, summary

__all__ = ["LineReporter", "LiveReporter", "Reporter", "Task", "begin", "current", "reporter_for", "step", "summary", "use"]
