"""How a golden item fails: a short text the user can act on, never a traceback of this plugin.

The first line is what pytest's short summary (``-ra``) shows, so it says what went wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.pytest_golden.checks import Check


class GoldenFailure(Exception):
    """A golden item failed for a reason the case or the converter explains; ``str()`` is the whole report."""


def _context(case_dir: Path, check: Check | None, precision: str | None) -> list[str]:
    lines = [f"case folder: {case_dir}"]
    if check is None:
        return lines
    line = f"check: {check.describe()}"
    if precision:
        line += f", judged at {precision} " + ("(set by the check)" if check.precision else "(from its passes and the converted graph)")
    return [*lines, line]


def case_error(case_name: str, case_dir: Path, check: Check | None, message: str) -> GoldenFailure:
    """A usage error of the case (manifest, model, pipeline, backend options): the converter's one line, then where."""
    message = message.removeprefix(f"golden case {case_name}: ")
    return GoldenFailure("\n".join([f"golden case '{case_name}': {message}", *_context(case_dir, check, None)]))


def mismatch(case_dir: Path, check: Check, result: Any) -> GoldenFailure:
    """The artifact missed the references: the per-output table with the tolerance that was applied.

    ``result`` is the :class:`converter.golden.CaseResult`; its table's ``needed_atol`` column is the
    scaled atol that would have passed each output with the configured rtol."""
    failed = sorted({name for _, comp in result.data_sets for name in comp.failed_outputs()})
    lines = [
        f"golden case '{result.case}' [{check.label()}]: outputs out of tolerance at {result.precision}: {', '.join(failed)}",
        *_context(case_dir, check, result.precision),
        "",
        result.table(),
        "",
        ("needed_atol: the smallest atol (x output scale) that would pass with this rtol; "
         "if the model changed on purpose, re-record the references with --golden-update"),
    ]
    return GoldenFailure("\n".join(lines))
