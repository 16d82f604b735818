"""The ``convert`` command line: a thin shell over the flow and the registered subcommands.

    convert MODEL [-p PIPELINE] [-b BACKEND] [-o OUT] [--golden DIR] [--verify] [--json]
    convert NAME ...     a subcommand registered by a plugin (built-ins: passes, backends,
                         plugins, inspect, golden, check, export, debug)

Exit codes: 0 success, 1 a check failed (golden mismatch, verify drift, build
failure), 2 usage error or bad input, 3 backend unavailable, 4 internal error.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import onnxruntime as ort

from converter import api, progress, reporting
from converter.command_api import ArgParser, Command, add_common
from converter.convert_args import backend_text, convert_parser
from converter.convert_job import GoldenFailed
from converter.errors import EXIT_INTERNAL, EXIT_OK, ConverterError, VerifyDrift, shorten
from converter.plugin_manager import Plugins, load_plugins
from converter.text_table import printable


def cmd_convert(args: argparse.Namespace, plugins: Plugins) -> int:
    """``convert MODEL ...``: :func:`converter.convert` with the parsed flags, then the report on stdout."""
    try:
        outcome = api.convert(
            args.model, args.passes, backend_text(args, plugins), output=args.output, golden=args.golden, precision=args.precision,
            keep_failed=args.keep_failed, verify=args.verify, inputs=args.inputs, input_shapes=args.input_shapes, seed=args.seed,
            check=args.check, report=args.report, plugins=plugins, **plugins.options.pass_input_values(args),
        )
    except GoldenFailed as exc:
        if args.json:
            reporting.emit("convert", exc.outcome.to_json())
        else:
            print(exc.outcome.report.table())
            assert exc.outcome.golden is not None
            print(exc.outcome.golden.table())
        raise
    except VerifyDrift as exc:
        if not args.json:
            print(exc.report.table())  # type: ignore[attr-defined]
        raise
    if args.json:
        reporting.emit("convert", outcome.to_json())
        return EXIT_OK
    print(outcome.report.table())
    if outcome.golden is not None:
        print(outcome.golden.table())
    assert outcome.artifact is not None
    print(f"wrote {', '.join(str(p) for p in outcome.written)}")
    if args.report:
        print(f"report: {args.report}")
    return EXIT_OK


def command_parser(command: Command) -> argparse.ArgumentParser:
    """``convert NAME``'s own parser: the command's arguments plus the common flags."""
    p = ArgParser(prog=f"convert {command.name}", description=command.description or command.help, epilog=command.epilog or None)
    command.add_arguments(p)
    add_common(p)
    return p


_LOG_HANDLER = "converter-cli"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, so log lines go above a live progress display."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(args: argparse.Namespace) -> None:
    """Our log lines on stderr; library noise (ONNX Runtime's coloured log, Python warnings) only with -v/--debug."""
    level = logging.DEBUG if getattr(args, "debug", False) else logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    handler = _StderrHandler()
    handler.set_name(_LOG_HANDLER)
    handler.setFormatter(logging.Formatter("convert: %(levelname)s: %(message)s"))
    logging.captureWarnings(True)  # RuntimeWarnings (divide by zero, overflow), PIL's DecompressionBombWarning
    for name, lvl in (("converter", level), ("py.warnings", logging.WARNING if level <= logging.INFO else logging.ERROR)):
        logger = logging.getLogger(name)  # our loggers only: the root logger (and so an embedding program's logging) is left alone
        for old in [h for h in logger.handlers if h.get_name() == _LOG_HANDLER]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(lvl)

    ort.set_default_logger_severity(0 if level <= logging.DEBUG else 2 if level <= logging.INFO else 4)


def _run(argv: list[str]) -> int:
    plugins = load_plugins()
    cls = plugins.commands.get(argv[0]) if argv else None
    if cls is not None:
        command = cls()
        args = command_parser(command).parse_args(argv[1:])
        _configure_logging(args)
        with progress.use(progress.reporter_for(sys.stderr, quiet=getattr(args, "quiet", False))):
            return int(command.run(args, plugins))
    args = convert_parser(plugins).parse_args(argv)
    _configure_logging(args)
    with progress.use(progress.reporter_for(sys.stderr, quiet=args.quiet)):
        return cmd_convert(args, plugins)


class Terminated(BaseException):
    """SIGTERM (timeout, CI cancellation, docker stop): unwinds like Ctrl-C so staging folders are removed."""


EXIT_SIGINT, EXIT_SIGTERM, EXIT_SIGPIPE = 130, 143, 141


@contextmanager
def _terminate_as_exception() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
        old_xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit (ulimit -f) is an OSError we report, not a kill
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGXFSZ, old_xfsz)


def _quiet_broken_pipe() -> int:
    """``convert passes | head``: the reader left; end quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        with _terminate_as_exception():
            return _run(argv)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except ConverterError as exc:
        if debug:
            traceback.print_exc()
        print(f"convert: error: {printable(shorten(str(exc), 1000))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("convert: interrupted (SIGINT); nothing was left behind", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated:
        print("convert: terminated (SIGTERM); nothing was left behind", file=sys.stderr)
        return EXIT_SIGTERM
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"convert: internal error: {type(exc).__name__}: {shorten(str(exc), 500)} (a bug in converter; rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
