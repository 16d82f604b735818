"""The backend conformance kit: does a backend class keep the contract ``convert`` relies on?

Run it on your backend from pytest (the plugin ships with converter and is loaded automatically)::

    pytest --converter-backend mypkg.backend:MyBackend [--converter-backend-options "k=v,..."] [--converter-require-available]

or without pytest::

    from converter.testing import check_backend
    results = check_backend(MyBackend)            # [CheckResult(backend, check, outcome, message), ...]
    assert all(results), "\\n".join(r.line() for r in results if not r)

or inside your own test module, parametrized over several backends::

    from converter.testing import pytest_params

    @pytest.mark.parametrize("case", pytest_params([MyBackend, MyOtherBackend]))
    def test_conformance(case):
        case.run()

The checks (each a test of its own, ``conformance[NAME]::CHECK``):

- ``class_contract``: a Backend subclass, not abstract; ``name`` a lowercase word; ``summary`` one line;
  ``Options`` a dataclass whose fields all have defaults; ``suffix`` like ``.onnx``; ``availability`` a classmethod.
- ``registration``: registers in a fresh registry and through the ``converter_register_backends`` hook; the
  same name twice is a PluginError; no other installed backend has the name.
- ``availability``: never raises; returns an Availability whose reason, when not ok, is one non-empty line.
  When not ok, every check below that runs the backend is *skipped* with that reason (*failed* with
  ``--converter-require-available``, for CI machines that have the backend's device).
- ``options_validation``: the defaults (or the options under test) build and the backend constructs; an
  unknown option and a badly typed value are UsageErrors naming the option; every option has help.
- ``emit_load_run[CASE]`` for every zoo case (:func:`zoo_cases`: fp32 MLP and CNN, float16 I/O, float16
  Casts, int8 Q/DQ, dynamic batch at 1, 3 and 8, three inputs and outputs of mixed dtypes, external data):
  emit into a real staging folder, nothing written outside it, every listed file inside it and every file
  in it listed, the model left unchanged, the manifest written, the files committed, the artifact loaded
  from disk by a fresh instance, every data set run and compared at the case's precision tolerance.
- ``interface[CASE]``: the runner's and the manifest's inputs and outputs keep the model's names, dtypes,
  ranks and dims (``converter.interface.interface_changes``).
- ``bad_input[truncated_model]``, ``bad_input[unknown_op]``: clean errors (exit 2; exit 1 or 2), never a crash.
- ``nothing_left_behind[emit_fails]``, ``nothing_left_behind[golden_mismatch]``: a failed conversion leaves
  nothing in the output folder, the working folder or beside the input.

Importing this package is cheap (pytest loads its plugin in every run): the names below are loaded
on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "check_backend": "kit", "checks": "kit", "run_check": "kit", "pytest_params": "kit", "kit_cases": "kit", "load_backend_class": "kit",
    "parse_options": "kit", "summary": "kit", "Check": "kit", "CheckResult": "kit", "KitCase": "kit",
    "Subject": "subject", "ConformanceFailure": "subject", "ConformanceSkip": "subject",
    "ZooCase": "zoo", "zoo_cases": "zoo", "zoo_case": "zoo", "ZOO_DIR": "zoo",
    "unknown_op_model": "failures",
}

__all__ = ["ZOO_DIR", "Check", "CheckResult", "ConformanceFailure", "ConformanceSkip", "KitCase", "Subject", "ZooCase", "check_backend", "checks",
           "kit_cases", "load_backend_class", "parse_options", "pytest_params", "run_check", "summary", "unknown_op_model", "zoo_case", "zoo_cases"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'converter.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"converter.testing.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
