"""The collector of one case (its ``manifest.json``) and its items: one per check, or one per case with ``--golden-update``.

Node ids read ``<case folder>/manifest.json::<name>[<passes>@<backend>]``, e.g.
``golden/ppocr_cls/manifest.json::ppocr_cls[infer_shapes,cleanup@ort]``, so a failing one can be
run again by its id (pytest refuses ``::`` after a folder); a check that names its precision adds
``:<precision>``. Markers: ``golden``, ``precision_<fp32|fp16|int8>``, ``backend_<name>``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter.pytest_golden.checks import CaseSpec, Check, check_precision, marker_name, read_spec, unique_names
from converter.pytest_golden.failure import GoldenFailure, case_error
from converter.pytest_golden.options import GoldenState, state_of
from converter.pytest_golden.summary import RECORDED, UNCHANGED


def _state(node: pytest.Item | pytest.Collector) -> GoldenState:
    state = state_of(node.config)
    assert state is not None, "golden items exist only in sessions with golden folders"
    return state


def _tmp_folder(item: pytest.Item) -> Path:
    factory = getattr(item.config, "_tmp_path_factory", None)  # what the tmp_path fixture uses; per xdist worker
    if factory is None:
        return Path(tempfile.mkdtemp(prefix="golden-"))
    return factory.mktemp(marker_name(item.name)[:30], numbered=True)


class GoldenItem(pytest.Item):
    """Base of the golden items: failures print their own report, not a traceback."""

    spec: CaseSpec

    def __init__(self, *, spec: CaseSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.add_marker("golden")

    def mark(self, checks: list[Check]) -> None:
        plugins = _state(self).converter_plugins()
        names = {f"precision_{check_precision(c, plugins)}" for c in checks} | {f"backend_{marker_name(c.backend_name)}" for c in checks}
        for name in sorted(names):
            if name.startswith("backend_"):
                self.config.addinivalue_line("markers", f"{name}: golden check on the '{name[8:]}' backend")
            self.add_marker(name)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, GoldenFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"golden {self.name}"


class GoldenErrorItem(GoldenItem):
    """A case whose manifest cannot be read: fails with that line (the other cases still run)."""

    def runtest(self) -> None:
        raise case_error(self.spec.name, self.spec.path, None, self.spec.error or "unreadable case")


class GoldenCheckItem(GoldenItem):
    """One check of a case: convert with its passes and backend, compare with the references."""

    def __init__(self, *, check: Check, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.mark([check])

    def runtest(self) -> None:
        from converter.pytest_golden.run import run_check

        run_check(self.spec.path, self.spec.name, self.check, _state(self).converter_plugins(), _tmp_folder(self))


class GoldenUpdateItem(GoldenItem):
    """``--golden-update``: re-record the case once (one item per case, so xdist workers never race on it)."""

    def __init__(self, *, checks: list[Check], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mark(checks)

    def runtest(self) -> None:
        from converter.errors import ConverterError
        from converter.pytest_golden.update import rerecord

        try:
            written, note = rerecord(self.spec.path)
        except ConverterError as exc:
            raise case_error(self.spec.name, self.spec.path, None, f"cannot re-record: {exc}") from None
        self.user_properties.append((RECORDED if written else UNCHANGED, note))


class GoldenCaseFile(pytest.File):
    """A case's ``manifest.json``: its checks are the tests."""

    def collect(self) -> Iterator[pytest.Item]:
        state = _state(self)
        spec = read_spec(self.path.parent)
        if spec.error is not None:
            yield GoldenErrorItem.from_parent(self, name=spec.name, spec=spec)
            return
        checks = [c for c in spec.checks if state.backends is None or c.backend_name in state.backends]
        if not checks:
            return
        if state.update:
            yield GoldenUpdateItem.from_parent(self, name=f"{spec.name}[golden-update]", spec=spec, checks=checks)
            return
        for name, check in zip(unique_names(spec, checks), checks):
            yield GoldenCheckItem.from_parent(self, name=name, spec=spec, check=check)
