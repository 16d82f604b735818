"""TensorRT's build phases become progress tasks (the pure adapter: runs without TensorRT)."""

from __future__ import annotations

import io
import logging

from converter import progress
from converter.plugins.tensorrt._build import BuildPhases


def test_build_phases_nest_count_steps_and_close_leftovers() -> None:
    out = io.StringIO()
    with progress.use(progress.LineReporter(out, min_seconds=0)):
        phases = BuildPhases(logging.getLogger("test"))
        phases.phase_start("Building engine", None, 2)
        phases.phase_start("Tactic selection", "Building engine", 3)
        for i in range(3):
            assert phases.step_complete("Tactic selection", i) is True
        phases.phase_finish("Tactic selection")
        phases.step_complete("Building engine", 0)
        phases.close(failed=True)  # the build failed with "Building engine" still open
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("convert:   tensorrt: Tactic selection: 3/3 steps")  # nested under its parent
    assert len(lines) == 1  # the failed phase is closed without a line: the build error says what failed
    assert phases.tasks == {}
