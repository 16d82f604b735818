"""The list of checks, and running them: without pytest (:func:`check_backend`) or inside it.

A check is a function of a :class:`~converter.testing.subject.Subject` that returns when the
backend conforms, raises :class:`~converter.testing.subject.ConformanceFailure` saying what the
backend did and what the contract expects, or :class:`~converter.testing.subject.ConformanceSkip`
when it cannot run here (the backend's ``availability()`` is not ok: the reason is its own).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from converter.errors import UsageError
from converter.testing import contract, failures, running
from converter.testing.subject import ConformanceFailure, ConformanceSkip, Subject, raised
from converter.testing.zoo import zoo_cases


@dataclass(frozen=True)
class Check:
    id: str
    """``class_contract``, ``emit_load_run[int8_qdq]``...: the name of the test."""
    summary: str
    func: Callable[[Subject], None]


def checks() -> list[Check]:
    """Every check, in the order they run; zoo-driven ones once per shipped case."""
    out = [
        Check("class_contract", "Backend subclass; name, one-line summary, Options dataclass with defaults, suffix, availability classmethod", contract.check_class_contract),
        Check("registration", "registers in a fresh registry and through the hook; a duplicate name is a PluginError; the name is free", contract.check_registration),
        Check("availability", "availability() never raises; an Availability whose reason, when not ok, is one non-empty line", contract.check_availability),
        Check("options_validation", "defaults build; unknown options and badly typed values are UsageErrors naming the option; help on every option",
              contract.check_options_validation),
    ]
    for case in zoo_cases():
        out.append(Check(f"emit_load_run[{case.name}]", f"emit in staging, commit, load from disk, run, compare at {case.precision}: {case.description}",
                         functools.partial(running.check_emit_load_run, case_name=case.name)))
    for case in zoo_cases():
        out.append(Check(f"interface[{case.name}]", "runner and manifest keep the model's input/output names, dtypes, ranks and dims",
                         functools.partial(running.check_interface, case_name=case.name)))
    out += [
        Check("bad_input[truncated_model]", "convert -b NAME on a truncated .onnx ends in exit 2 with nothing written", failures.check_bad_input_truncated),
        Check("bad_input[unknown_op]", "a model with an op that exists nowhere is refused with a ConverterError (exit 1 or 2)", failures.check_bad_input_unknown_op),
        Check("nothing_left_behind[emit_fails]", "a conversion the backend fails leaves nothing in the output folder or the working folder",
              failures.check_nothing_left_emit_fails),
        Check("nothing_left_behind[golden_mismatch]", "a conversion whose golden check fails after emit leaves nothing behind",
              failures.check_nothing_left_golden_mismatch),
    ]
    return out


Outcome = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class CheckResult:
    backend: str
    check: str
    outcome: Outcome
    message: str = ""

    def __bool__(self) -> bool:
        return self.outcome != "failed"

    def line(self) -> str:
        return f"{self.outcome.upper()} conformance[{self.backend}]::{self.check}" + (f": {self.message}" if self.message else "")


def run_check(subject: Subject, check: Check) -> CheckResult:
    """Run one check; any exception the check did not turn into a failure is reported as one, with where it came from."""
    try:
        check.func(subject)
    except ConformanceSkip as exc:
        return CheckResult(subject.label, check.id, "skipped", str(exc))
    except ConformanceFailure as exc:
        return CheckResult(subject.label, check.id, "failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure, with where it was raised
        return CheckResult(subject.label, check.id, "failed", f"unexpected {raised(exc)}")
    return CheckResult(subject.label, check.id, "passed")


def _selected(all_checks: list[Check], select: Iterable[str] | None) -> list[Check]:
    if select is None:
        return all_checks
    wanted = list(select)
    unknown = [w for w in wanted if not any(c.id == w or c.id.startswith(w + "[") for c in all_checks)]
    if unknown:
        raise UsageError(f"no conformance check {unknown[0]!r} (checks: {', '.join(c.id for c in all_checks)})")
    return [c for c in all_checks if any(c.id == w or c.id.startswith(w + "[") for w in wanted)]


def check_backend(cls: Any, options: dict[str, str] | str | None = None, *, select: Iterable[str] | None = None,
                  require_available: bool = False) -> list[CheckResult]:
    """Run the kit on a backend class without pytest; ``select`` keeps checks by id or family (``emit_load_run``).

    ``options`` are the backend's options as text (``{"threads": "1"}`` or ``"threads=1"``); with
    ``require_available`` an unavailable backend fails the checks that run it instead of skipping them.
    """
    subject = Subject(cls, parse_options(options), require_available=require_available)
    try:
        return [run_check(subject, c) for c in _selected(checks(), select)]
    finally:
        subject.close()


def parse_options(options: dict[str, str] | str | None) -> dict[str, str]:
    """``"k=v,k2=[a,b]"`` (the text inside ``-b NAME{...}``) or a dict → ``{"k": "v", ...}``."""
    if options is None:
        return {}
    if isinstance(options, dict):
        return {str(k): str(v) for k, v in options.items()}
    from converter.pipeline_text import parse_step

    return parse_step("backend{" + options + "}").options


def load_backend_class(spec: str) -> Any:
    """``"mypkg.module:MyBackend"`` → the class; a bad spec is a UsageError saying what to write."""
    module, sep, attr = spec.strip().partition(":")
    if not sep or not module or not attr:
        raise UsageError(f"--converter-backend {spec!r}: write MODULE:CLASS, e.g. mypkg.backend:MyBackend")
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        raise UsageError(f"--converter-backend {spec!r}: cannot import {module}: {raised(exc)}") from exc
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--converter-backend {spec!r}: {module} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class KitCase:
    """One (backend, check) pair, for a project that parametrizes the kit over its own backends."""

    subject: Subject
    check: Check

    @property
    def id(self) -> str:
        return f"{self.subject.label}:{self.check.id}"

    def run(self) -> None:
        """Run inside a pytest test: a failure fails it with the kit's message, a skip skips it."""
        import pytest

        result = run_check(self.subject, self.check)
        if result.outcome == "skipped":
            pytest.skip(result.message)
        if result.outcome == "failed":
            pytest.fail(f"conformance[{result.backend}]::{result.check} failed: {result.message}", pytrace=False)


def kit_cases(backends: Sequence[Any], options: dict[str, str] | str | None = None, *, select: Iterable[str] | None = None) -> list[KitCase]:
    """Every check for every backend class (each class gets one shared subject)."""
    out = []
    for cls in backends:
        subject = Subject(cls, parse_options(options))
        out += [KitCase(subject, c) for c in _selected(checks(), select)]
    return out


def pytest_params(backends: Sequence[Any], options: dict[str, str] | str | None = None, *, select: Iterable[str] | None = None) -> list[Any]:
    """``@pytest.mark.parametrize("case", pytest_params([MyBackend]))`` then ``case.run()``: the kit in your own test module."""
    import pytest

    return [pytest.param(c, id=c.id) for c in kit_cases(backends, options, select=select)]


def summary(results: Sequence[CheckResult]) -> str:
    counts = {o: sum(r.outcome == o for r in results) for o in ("passed", "failed", "skipped")}
    return ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no checks"


__all__ = ["Check", "CheckResult", "KitCase", "check_backend", "checks", "kit_cases", "load_backend_class", "parse_options", "pytest_params", "run_check", "summary"]
