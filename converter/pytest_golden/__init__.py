"""pytest plugin: golden cases as tests (entry point ``pytest11``: ``converter-golden``).

Point it at golden case folders and each case x check becomes one test::

    pytest --golden-dir golden                      # or, in the ini file: golden_dirs = golden
    pytest --golden-dir golden -m "precision_int8 and backend_ort"
    pytest --golden-dir golden --golden-backend onnx -n 4
    pytest --golden-dir golden/ppocr_cls --golden-update   # re-record (never without the flag)

A failing check prints the case, the check and the per-output table (max_abs, max_rel, cosine,
top1, needed_atol: the tolerance that would have passed). Without golden folders the plugin
collects nothing and imports nothing of the converter beyond this package.

    options.py   --golden-dir, --golden-update, --golden-backend, ini golden_dirs; the session state
    checks.py    a manifest's checks: labels, precision, marker names (collection reads only manifest.json)
    collect.py   the collector of a case (its manifest.json) and its items
    run.py       one check: convert, compare
    update.py    --golden-update: re-record a case on ONNX Runtime
    failure.py   the text a failing item shows
    summary.py   the terminal summary of --golden-update
"""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.pytest_golden import options


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    options.configure(config)
    state = options.state_of(config)
    if state is not None and state.update:
        from converter.pytest_golden.summary import RecordedSummary

        config.pluginmanager.register(RecordedSummary(), "converter-golden-summary")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name != options.MANIFEST:
        return None
    state = options.state_of(parent.config)
    if state is None or not state.covers(file_path.parent):
        return None
    from converter.pytest_golden.collect import GoldenCaseFile

    return GoldenCaseFile.from_parent(parent, path=file_path)


def pytest_report_header(config: pytest.Config) -> str | None:
    state = options.state_of(config)
    if state is None:
        return None
    mode = "re-recording references (--golden-update)" if state.update else "checking"
    backends = f", backends: {', '.join(sorted(state.backends))}" if state.backends else ""
    return f"golden: {mode} cases in {', '.join(map(str, state.roots))}{backends}"
