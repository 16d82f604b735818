"""Run one unit (case x check) and say how it went, as a plain dict that pickles anywhere.

The same flow as ``convert MODEL -p PASSES -b BACKEND --golden CASE``: the artifact goes into a
temporary folder of its own (removed after), so units share nothing and can run in any process.
Nothing escapes but ``KeyboardInterrupt``/``SystemExit``: every outcome is a verdict.

    passed   the artifact matched the references
    failed   it did not (``details``: the per-output table), or another check failed (exit-1 errors)
    error    the case or the check cannot run as written (missing model, bad pipeline): one line
    skipped  the backend cannot run here (``note``: why)
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import onnxruntime as ort

from converter import progress
from converter.convert_job import ConvertRequest, GoldenFailed, convert
from converter.errors import EXIT_CHECK_FAILED, BackendUnavailable, ConverterError, describe_exception
from converter.golden import CaseResult
from converter.pipeline_text import parse_step
from converter.plugin_manager import Plugins, load_plugins
from converter.pytest_golden.failure import case_error, mismatch
from converter.zoo.cases import Unit
from converter.zoo.sources import safe_name

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
VERDICTS = (PASSED, FAILED, ERROR, SKIPPED)

_PLUGINS: Plugins | None = None


def plugins_here() -> Plugins:
    """This process's plugins (built-ins and installed entry points), loaded once per process."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = load_plugins()
    return _PLUGINS


def blank(unit: Unit) -> dict[str, Any]:
    check = unit.check
    return {
        "index": unit.index, "case": unit.case, "case_dir": unit.case_dir, "check": unit.label,
        "passes": None if check is None else check.passes, "backend": None if check is None else check.backend,
        "precision": None if check is None else check.precision, "verdict": ERROR, "seconds": 0.0,
        "worst_cosine": None, "note": "", "details": "", "golden": None,
    }


def error_result(unit: Unit, message: str, seconds: float = 0.0) -> dict[str, Any]:
    """An ``error`` verdict: ``note`` is the one line, ``details`` adds the case folder and the check."""
    out = blank(unit)
    out.update(verdict=ERROR, seconds=seconds, note=" ".join(message.split()),
               details=str(case_error(unit.case, Path(unit.case_dir), unit.check, message)))
    return out


def worst_cosine(result: CaseResult) -> float | None:
    values = [float(o.cosine) for _, comp in result.data_sets for o in comp.outputs]
    return min(values) if values else None


def _golden(out: dict[str, Any], result: CaseResult | None) -> None:
    if result is not None:
        out["golden"] = result.to_json()
        out["worst_cosine"] = worst_cosine(result)


def run_unit(unit: Unit, model: Path, case_dir: Path | None = None, plugins: Plugins | None = None) -> dict[str, Any]:
    """Convert ``model`` with the unit's check and compare with the case in ``case_dir`` (default: the unit's own folder).

    ``plugins``: those of the calling process (serial runs); workers load theirs once (:func:`plugins_here`)."""
    start = time.perf_counter()
    check = unit.check
    if check is None:
        return error_result(unit, unit.spec_error or "unreadable case")
    plugins = plugins or plugins_here()
    out = blank(unit)
    try:
        with tempfile.TemporaryDirectory(prefix="zoo-") as tmp, progress.use(progress.Reporter()):  # the unit's own steps stay quiet
            suffix = plugins.backends.get(parse_step(check.backend).name).cls.suffix
            req = ConvertRequest(model=model, pipeline=check.passes, backend=check.backend, output=Path(tmp) / f"{safe_name(unit.case)}{suffix}",
                                 golden=case_dir or Path(unit.case_dir), precision=check.precision)
            outcome = convert(req, plugins)
        out["verdict"] = PASSED
        _golden(out, outcome.golden)
    except GoldenFailed as exc:
        result = exc.outcome.golden
        assert result is not None
        failed = sorted({name for _, comp in result.data_sets for name in comp.failed_outputs()})
        out.update(verdict=FAILED, note=f"outputs out of tolerance at {result.precision}: {', '.join(failed)}",
                   details=str(mismatch(Path(unit.case_dir), check, result)))
        _golden(out, result)
    except BackendUnavailable as exc:
        out.update(verdict=SKIPPED, note=str(exc))
    except ConverterError as exc:
        if exc.exit_code != EXIT_CHECK_FAILED:
            return error_result(unit, str(exc), time.perf_counter() - start)
        out.update(verdict=FAILED, note=" ".join(str(exc).split()), details=str(case_error(unit.case, Path(unit.case_dir), check, str(exc))))
    except Exception as exc:  # noqa: BLE001 -- a bug of ours or of a plugin: this unit errors, the others run
        out.update(verdict=ERROR, note=f"internal error: {type(exc).__name__}: {describe_exception(exc)}", details=traceback.format_exc())
    out["seconds"] = time.perf_counter() - start
    return out


WORKER_LOG = "converter-zoo-worker"


def configure_worker(level: int) -> None:
    """A worker process logs as the command does (``convert: LEVEL: ...`` on stderr, at the driver's level)."""
    logger = logging.getLogger("converter")
    if not any(h.get_name() == WORKER_LOG for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(WORKER_LOG)
        handler.setFormatter(logging.Formatter("convert: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    ort.set_default_logger_severity(0 if level <= logging.DEBUG else 2 if level <= logging.INFO else 4)
    plugins_here()
