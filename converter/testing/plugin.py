"""The conformance kit as a pytest plugin: ``pytest --converter-backend mypkg.module:MyBackend``.

Loaded in every pytest run through the ``pytest11`` entry point ``converter-conformance``; with
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, add ``-p converter-conformance`` (that name works with
autoload on too; ``-p converter.testing.plugin`` only with it off: pytest refuses to register one
module under two names). Without ``--converter-backend`` it only adds its options: it imports
nothing of converter's machinery, adds no test and registers no other hook.

How the tests arrive (checked with pytest 9): the checks are not a test file of the user's project, so they
are not collected from disk. When the option is given, a second plugin object is registered whose
``pytest_collection_modifyitems`` (run first among those hooks, so ``-k``, ``-m conformance``,
``--deselect``, ``--lf`` and ``-x`` treat them like any test) appends, per ``--converter-backend``,
one collector node ``conformance[NAME]`` (a child of the session) holding one item per check:
``conformance[NAME]::emit_load_run[int8_qdq]``. Their node ids are strings pytest parses itself, so
``--lf``, ``--deselect`` and JUnit XML (classname ``conformance[NAME]``) read them back as written;
they are not paths, so select checks with ``-k`` (``-k "emit_load_run and int8"``), not as arguments.
A failed check prints the kit's message (what the backend did, what the contract expects), not a
traceback; ``--tb=long`` adds the traceback of what the backend raised. A check that runs the backend
is skipped where ``availability()`` is not ok, with the backend's own reason.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("converter-conformance", "converter backend conformance kit (converter.testing)")
    group.addoption("--converter-backend", action="append", default=[], dest="converter_backend", metavar="MODULE:CLASS",
                    help="run the backend conformance checks on this Backend class (repeatable), e.g. mypkg.backend:MyBackend")
    group.addoption("--converter-backend-options", default=None, dest="converter_backend_options", metavar="K=V,...",
                    help="options for the backend under test, written as inside -b NAME{...}, e.g. 'threads=1,mode=[a,b]'")
    group.addoption("--converter-require-available", action="store_true", default=False, dest="converter_require_available",
                    help="fail (not skip) the checks that run the backend when its availability() is not ok: for CI machines that have its device")


def pytest_configure(config: pytest.Config) -> None:
    specs = config.getoption("converter_backend", default=None) or []
    if not specs:
        return
    from converter.errors import UsageError
    from converter.testing.kit import load_backend_class, parse_options
    from converter.testing.subject import Subject

    config.addinivalue_line("markers", "conformance: a converter backend conformance check (converter.testing)")
    try:
        options = parse_options(config.getoption("converter_backend_options"))
        require = bool(config.getoption("converter_require_available", default=False))
        subjects = [Subject(load_backend_class(spec), options, require_available=require) for spec in specs]
        for s in subjects:
            s.check_options_text()
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    for s in subjects:
        config.add_cleanup(s.close)
    config.pluginmanager.register(_Kit(subjects), "converter-conformance-kit")


class ConformanceCollector(pytest.Collector):
    """``conformance[NAME]``: the checks of one backend."""

    def collect(self) -> list[Any]:  # its items are made by pytest_collection_modifyitems; never collected from disk
        return []


class ConformanceItem(pytest.Item):
    """One check of one backend."""

    def __init__(self, *, subject: Any, check: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.subject = subject
        self.check = check
        self.add_marker("conformance")

    def runtest(self) -> None:
        from converter.testing.subject import ConformanceSkip

        try:
            self.check.func(self.subject)
        except ConformanceSkip as exc:
            pytest.skip(str(exc))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from converter.testing.subject import ConformanceFailure

        if isinstance(excinfo.value, ConformanceFailure):
            text = f"{excinfo.value}\n(the check, {self.nodeid}: {self.check.summary})"
            if self.config.getoption("tbstyle", "auto") == "long":
                return f"{super().repr_failure(excinfo, style='long')}\n\n{text}"
            return text
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, self.nodeid


def _unique(label: str, taken: set[str]) -> str:
    name, n = f"conformance[{label}]", 2
    while name in taken:
        name, n = f"conformance[{label}-{n}]", n + 1
    taken.add(name)
    return name


class _Kit:
    """The hooks that add and report the checks, registered only when --converter-backend is given."""

    def __init__(self, subjects: list[Any]) -> None:
        self.subjects = subjects

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        from converter.testing.kit import checks

        taken: set[str] = set()
        for subject in self.subjects:
            name = _unique(subject.label, taken)
            collector = ConformanceCollector.from_parent(session, name=name, nodeid=name)
            # string node ids, parsed by pytest itself: the same ids --lf and --deselect read back ("name[param]" is a parametrized id)
            made = [ConformanceItem.from_parent(collector, name=c.id, nodeid=f"{name}::{c.id}", subject=subject, check=c) for c in checks()]
            session.ihook.pytest_collectreport(report=pytest.CollectReport(collector.nodeid, "passed", None, made))  # counted in "collected N items"
            items.extend(made)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if isinstance(item, ConformanceItem) and report.skipped and isinstance(report.longrepr, tuple):
            # "SKIPPED [20] conformance[tensorrt]: backend 'tensorrt' is unavailable here: ...", not the kit's source line
            report.longrepr = (str(item.config.invocation_params.dir / item.parent.name), None, report.longrepr[2])
        return report
