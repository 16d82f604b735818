"""The error hierarchy and the exit codes the CLI maps it to.

User-facing errors derive from :class:`ConverterError` and carry a one-line
message that says what is wrong and what to do. Anything else that escapes is a
bug of ours and exits with :data:`EXIT_INTERNAL`.

The vocabulary for pass (and backend) authors, all a pass ever needs:

- raise :class:`PassRefused` when the *model* cannot be handled (an op you do not
  support, a graph you cannot transform safely): exit 2, the pass manager adds
  the pass name and the passes before it;
- raise :class:`UsageError` when the *user's input* is wrong (an option value that
  does not fit this model, calibration data with the wrong shape): exit 2;
- any other exception is a bug (exit 4, ``--debug`` shows the traceback). Do not
  catch and re-wrap library errors as ``PassRefused`` unless the model is at fault.

:class:`PassError` is the pass manager's wrapper around those; passes never raise it.
Use :func:`describe_exception` for the one line about a library's exception.
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_BACKEND_UNAVAILABLE = 3
EXIT_INTERNAL = 4


class ConverterError(Exception):
    """Base of every error the user can fix; ``str(err)`` is the one line we print."""

    exit_code: int = EXIT_USAGE


class UsageError(ConverterError):
    """Bad command line, options or pipeline text."""


class ModelError(ConverterError):
    """The model cannot be loaded, or it is invalid."""


class PassError(ConverterError):
    """A pass failed or refused the model; names the pass and those that ran before it."""

    def __init__(self, pass_name: str, message: str, ran_before: Sequence[str] = (), *, internal: bool = False) -> None:
        self.pass_name = pass_name
        if internal:
            self.exit_code = EXIT_INTERNAL
        self.message = message
        self.ran_before = list(ran_before)
        before = ", ".join(self.ran_before) if self.ran_before else "none"
        super().__init__(f"pass '{pass_name}' failed: {message} (passes run before it: {before})")


class BackendUnavailable(ConverterError):
    """The backend cannot run here (a dependency or a device is missing)."""

    exit_code = EXIT_BACKEND_UNAVAILABLE


class BackendError(ConverterError):
    """The backend could not build or run the artifact."""

    exit_code = EXIT_CHECK_FAILED


class CheckFailed(ConverterError):
    """A check ran and failed: golden mismatch, verification drift."""

    exit_code = EXIT_CHECK_FAILED


class PluginError(ConverterError):
    """A plugin registered something invalid (a duplicate name, a bad class)."""


class VerifyDrift(CheckFailed):
    """``--verify`` found a pass whose outputs drift; carries the report of the passes that ran."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


class PassRefused(ConverterError):
    """Raised by a pass that refuses the model (exit 2); the pass manager adds the pass name and history."""


def shorten(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters: the middle is cut, so both the start and the reason at the end stay."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    keep = max(limit - 5, 2)
    head = keep // 2
    return f"{text[:head]} ... {text[len(text) - (keep - head):]}"


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """One line about an exception from a library: its message, or where it was raised when it has none."""
    text = " ".join(str(exc).split())
    if not text:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} ({tb.tb_frame.f_code.co_name})" if tb else ""
        text = f"{type(exc).__name__}{where}"
    return shorten(text, limit)
