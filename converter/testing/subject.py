"""The backend under test, and the vocabulary of the checks: fail with what went wrong, skip with why.

A :class:`Subject` is one backend class plus the options it is tested with. It owns a scratch
folder (removed by :meth:`Subject.close`, at the latest when the interpreter exits) and caches
what several checks share: each zoo case is emitted once, and the checks that read the result
(``emit_load_run``, ``interface``) see the same artifact.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import traceback
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from converter.errors import ConverterError, describe_exception, shorten


class ConformanceFailure(AssertionError):
    """A check failed; ``str()`` says what the backend did and what the contract expects."""


class ConformanceSkip(Exception):
    """A check cannot run here (the backend is unavailable); ``str()`` is the reason."""


def fail(message: str) -> ConformanceFailure:
    return ConformanceFailure(message)


def raised(exc: BaseException) -> str:
    """``TypeError: message (raised at file.py:12 in func)``: enough to find the line without a traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (raised at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}: {describe_exception(exc, 400)}{where}"


def exit_code_of(exc: BaseException) -> int:
    """The exit code the CLI gives this exception (``converter.cli.main``): a non-ConverterError is a bug, exit 4."""
    return exc.exit_code if isinstance(exc, ConverterError) else 4


def label_of(cls: Any) -> str:
    name = getattr(cls, "name", None)
    if isinstance(name, str) and name.strip():
        return shorten(name.strip(), 40)
    return getattr(cls, "__name__", repr(cls))


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Subject:
    """A backend class under test, with its options (``{"opt": "text"}``, as after ``-b NAME{...}``)."""

    def __init__(self, cls: Any, options: dict[str, str] | None = None, *, require_available: bool = False) -> None:
        self.cls = cls
        self.options: dict[str, str] = dict(options or {})
        self.require = require_available
        """Fail, rather than skip, the checks that run the backend when it is unavailable (a CI machine that must run them)."""
        self.label = label_of(cls)
        self._work: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._counter = itertools.count()
        self.cache: dict[str, Any] = {}
        """Results checks share (emitted zoo cases, availability), keyed by the check's own key."""

    # -- scratch space --------------------------------------------------------------------------
    @property
    def work(self) -> Path:
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix=f"converter-conformance-{self.label}-"))
            self._finalizer = weakref.finalize(self, _remove, str(self._work))
        return self._work

    def fresh_dir(self, stem: str) -> Path:
        """An empty folder of its own for one check (under the scratch folder)."""
        d = self.work / f"{next(self._counter):03d}-{stem}"
        d.mkdir()
        return d

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._work, self._finalizer = None, None
        self.cache.clear()

    # -- the backend ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(getattr(self.cls, "name", self.label))

    def backend_text(self) -> str:
        """What a user types after ``-b``: ``name`` or ``name{k=v,...}``."""
        from converter.pipeline_text import Step, format_step

        return format_step(Step(self.name, dict(self.options)))

    def make_options(self) -> Any:
        from converter.options import build_options

        try:
            return build_options(self.cls.Options, self.options, f"backend '{self.name}'")
        except ConverterError as exc:
            raise fail(f"the options under test are refused: {exc}") from exc
        except Exception as exc:
            raise fail(f"building the options ({self.cls.__name__}.Options) raised {raised(exc)}; options must be a dataclass the options text can fill") from exc

    def check_options_text(self) -> None:
        """Refuse (UsageError) options under test that the backend's Options cannot take: a mistake of the caller, not a finding."""
        import dataclasses

        from converter.errors import UsageError
        from converter.options import build_options

        if not self.options or not dataclasses.is_dataclass(getattr(self.cls, "Options", None)):
            return
        try:
            build_options(self.cls.Options, self.options, f"backend '{self.name}'")
        except UsageError as exc:
            raise UsageError(f"--converter-backend-options: {exc}") from exc
        except Exception:  # noqa: BLE001, S110 - a broken Options class is the checks' finding, reported by them
            pass

    def backend(self) -> Any:
        """A fresh instance, built as ``convert -b`` builds it (options parsed from text)."""
        options = self.make_options()
        try:
            return self.cls(options)
        except Exception as exc:
            raise fail(f"{self.cls.__name__}(options) raised {raised(exc)}; constructing a backend must only store its options") from exc

    def availability(self) -> Any:
        """``cls.availability()``, once; a raising or malformed answer fails the calling check."""
        from converter.backend_api import Availability

        if "availability" not in self.cache:
            try:
                self.cache["availability"] = self.cls.availability()
            except Exception as exc:  # noqa: BLE001 - availability() must never raise: that is the finding
                self.cache["availability"] = exc
        avail = self.cache["availability"]
        if isinstance(avail, BaseException):
            raise fail(f"availability() raised {raised(avail)}; it must never raise: return Availability(False, 'the reason') when the backend cannot run here")
        if not isinstance(avail, Availability):
            raise fail(f"availability() returned {shorten(repr(avail), 80)}, not a converter.backend_api.Availability")
        return avail

    def require_available(self) -> None:
        """Skip the calling check when the backend cannot run here, with its own reason.

        A backend whose ``preflight()`` refuses the options on this machine (BackendUnavailable, exit 3)
        is skipped the same way: ``convert`` would stop there too.
        """
        from converter.errors import BackendUnavailable

        avail = self.availability()
        if not avail.ok:
            why = f"backend '{self.name}' is unavailable here: {avail.reason or '(no reason given)'}"
            raise fail(why + " (and this run requires it to be available)") if self.require else ConformanceSkip(why)
        if "preflight" not in self.cache:
            backend = self.backend()
            try:
                backend.preflight()
                self.cache["preflight"] = None
            except BackendUnavailable as exc:
                why = f"backend '{self.name}' is unavailable with these options: {exc}"
                self.cache["preflight"] = fail(why + " (and this run requires it to be available)") if self.require else ConformanceSkip(why)
            except ConverterError as exc:
                self.cache["preflight"] = fail(f"preflight() refused the options under test: {exc}")
            except Exception as exc:  # noqa: BLE001 - the backend's code: whatever it raises is the finding
                self.cache["preflight"] = fail(f"preflight() raised {raised(exc)}; it must raise BackendUnavailable (or UsageError for bad options)")
        if self.cache["preflight"] is not None:
            raise self.cache["preflight"]

    def plugins(self) -> Any:
        """A plugin set holding only this backend (no passes): what ``convert`` needs to run it."""
        from converter.errors import PluginError
        from converter.plugin_manager import Plugins
        from converter.registry import BackendRegistry, PassRegistry

        registry = BackendRegistry()
        registry.current_source = "conformance-kit"
        try:
            registry.add(self.cls)
        except PluginError as exc:
            raise fail(f"the registry refuses the backend: {exc}") from exc
        return Plugins(passes=PassRegistry(), backends=registry)


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[Path]:
    """Run a block with ``path`` as the current folder (a backend must not write there)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def listing(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder``, relative, with file sizes (-1 for folders)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in sorted(folder.rglob("*"))}


def listing_text(entries: dict[str, int] | list[str], limit: int = 8) -> str:
    names = sorted(entries)
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
