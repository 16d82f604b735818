"""The ``--golden-update`` summary: which cases were re-recorded, and what changed in each.

The notes ride on the reports' ``user_properties``, so with xdist they reach the controller too."""

from __future__ import annotations

import pytest

RECORDED = "golden_rerecorded"
"""``user_properties`` key an item sets after re-recording its case."""
UNCHANGED = "golden_unchanged"
"""... after finding its references unchanged (the case is left as it was)."""


class RecordedSummary:
    """Registered only with ``--golden-update``."""

    def __init__(self) -> None:
        self.notes: list[tuple[str, str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.passed:
            self.notes += [(key, report.nodeid, str(value)) for key, value in report.user_properties if key in (RECORDED, UNCHANGED)]

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        recorded = sum(key == RECORDED for key, _, _ in self.notes)
        terminalreporter.write_sep("=", f"golden: re-recorded {recorded} case(s), {len(self.notes) - recorded} unchanged")
        for _, nodeid, note in self.notes:
            terminalreporter.write_line(f"{nodeid}: {note}")
