"""The ``convert`` command line.

    convert MODEL [-p PIPELINE] [-b BACKEND] [-o OUT] [--golden DIR] [--verify] [--json]
    convert passes | backends | plugins [--json]
    convert inspect MODEL [--json]
    convert golden record MODEL -o golden/NAME (--inputs FEEDS.npz | --random-inputs)
    convert golden check ARTIFACT golden/NAME [--precision P]

Exit codes: 0 success, 1 a check failed (golden mismatch, verify drift, build
failure), 2 usage error or bad input, 3 backend unavailable, 4 internal error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from converter import __version__
from converter.errors import EXIT_CHECK_FAILED, EXIT_INTERNAL, EXIT_OK, ConverterError, UsageError, VerifyDrift

SUBCOMMANDS = ("passes", "backends", "plugins", "inspect", "golden", "check", "export", "debug")


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", help="log what each step does (stderr)")


def convert_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="convert",
        description="Run passes over an ONNX model and emit a runnable artifact through a backend.",
        epilog="subcommands: convert passes|backends|plugins, convert inspect MODEL, convert golden record|check, convert check MODEL -b tensorrt, convert export SPEC, convert debug accuracy (each has --help). "
        "Exit codes: 0 ok, 1 check failed, 2 usage/bad input, 3 backend unavailable, 4 internal error.",
    )
    p.add_argument("model", type=Path, help="input .onnx model (never modified)")
    p.add_argument("-p", "--passes", default="", metavar="PIPELINE", help="passes in order, e.g. 'infer_shapes,cleanup{sort=false}'")
    p.add_argument("-b", "--backend", default="ort", help="backend, with options in braces, e.g. 'ort{opt_level=all}' (default: ort)")
    p.add_argument("-o", "--output", type=Path, help="artifact path (default: MODEL_STEM.BACKEND.SUFFIX in the current folder)")
    p.add_argument("--golden", type=Path, metavar="DIR", help="check the artifact against this golden case before writing it")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="tolerance policy for --golden (default: from the passes)")
    p.add_argument("--keep-failed", action="store_true", help="write the artifact even when its golden check fails")
    p.add_argument("--verify", action="store_true", help="run the model after each pass and name the first pass that drifts")
    p.add_argument("--inputs", type=Path, metavar="FEEDS.npz", help="inputs for --verify (default: seeded random data)")
    p.add_argument("--input-shapes", metavar="SHAPES", help="concrete shapes for symbolic dims, e.g. 'x:1x3x224x224'")
    p.add_argument("--seed", type=int, default=0, help="seed for generated sample inputs (default 0)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the ONNX checker on the input and after each pass")
    calib = p.add_argument_group("calibration (for quantization passes)")
    calib.add_argument("--calib-data", metavar="SRC", help="FEEDS.npz (first axis = samples), a folder of images with a preprocessing spec, or module:function yielding feed dicts")
    calib.add_argument("--calib-random", action="store_true", help="allow seeded random calibration data (a warning: scales from random data are rarely right)")
    shapes = p.add_argument_group("shapes for engine backends (trtexec style; become backend options)")
    shapes.add_argument("--min-shapes", metavar="SHAPES", help="e.g. 'x:1x3x224x224,mask:1x128'; ';' separates profiles")
    shapes.add_argument("--opt-shapes", metavar="SHAPES")
    shapes.add_argument("--max-shapes", metavar="SHAPES")
    shapes.add_argument("--batch", metavar="MIN..OPT..MAX", help="profile for a model whose only dynamic dim is the batch, e.g. 1..8..32")
    p.add_argument("--version", action="version", version=f"converter {__version__}")
    _common(p)
    return p


def sub_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convert")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (("passes", "list passes and their options"), ("backends", "list backends and whether they are available"), ("plugins", "list passes, backends and plugins")):
        _common(sub.add_parser(name, help=text, description=text))
    chk_be = sub.add_parser("check", help="lint a model for a backend (no device needed)", description="Report what the backend will reject or run slowly. Exit 0 when clean, 1 with findings.")
    chk_be.add_argument("model", type=Path)
    chk_be.add_argument("-b", "--backend", default="tensorrt")
    chk_be.add_argument("--ignore-warnings", action="store_true", help="exit 0 when there are only warnings")
    _common(chk_be)
    from converter import cli_debug, cli_export

    _common(cli_export.add_parser(sub))
    cli_debug.add_parser(sub, _common)
    ins = sub.add_parser("inspect", help="summarize a model", description="Opset, inputs/outputs with symbolic dims, op histogram, size.")
    ins.add_argument("model", type=Path)
    _common(ins)
    golden = sub.add_parser("golden", help="record or check golden cases")
    gsub = golden.add_subparsers(dest="golden_command", required=True, parser_class=_Parser)
    rec = gsub.add_parser("record", help="run MODEL on ONNX Runtime and store inputs and reference outputs", description="Record a golden case (explicit: the only way reference outputs change).")
    rec.add_argument("model", type=Path)
    rec.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="case folder, e.g. golden/NAME")
    src = rec.add_mutually_exclusive_group(required=True)
    src.add_argument("--inputs", type=Path, metavar="FEEDS.npz", help="input arrays keyed by input name")
    src.add_argument("--random-inputs", action="store_true", help="use seeded random inputs (a warning: real data catches more)")
    rec.add_argument("--input-shapes", metavar="SHAPES", help="shapes for symbolic dims with --random-inputs")
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--recipe", default="", help="how to rebuild the model (stored in the manifest)")
    rec.add_argument("--copy-model", action="store_true", help="store the model inside the case (for small models)")
    rec.add_argument("--force", action="store_true", help="replace an existing case")
    _common(rec)
    chk = gsub.add_parser("check", help="run an artifact and compare with a golden case", description="Exit 1 when any output misses its tolerance.")
    chk.add_argument("artifact", type=Path)
    chk.add_argument("case", type=Path)
    chk.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    chk.add_argument("--backend", help="backend that made the artifact (default: from its manifest; bare .onnx: ort)")
    _common(chk)
    return p


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def request_from_args(args: argparse.Namespace) -> Any:
    """The ConvertRequest that ``convert MODEL ...`` (or ``export --then``) asks for."""
    from converter.convert_job import ConvertRequest

    return ConvertRequest(
        model=args.model, pipeline=args.passes, backend=backend_text(args), output=args.output, golden=args.golden,
        precision=args.precision, verify=args.verify, inputs=args.inputs, input_shapes=args.input_shapes,
        check=args.check, keep_failed=args.keep_failed, seed=args.seed,
        calib_data=args.calib_data, calib_random=args.calib_random,
    )


def cmd_convert(args: argparse.Namespace) -> int:
    from converter.convert_job import GoldenFailed, convert
    from converter.plugin_manager import load_plugins

    req = request_from_args(args)
    try:
        outcome = convert(req, load_plugins())
    except GoldenFailed as exc:
        if args.json:
            _emit_json(exc.outcome.to_json())
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
        _emit_json(outcome.to_json())
        return EXIT_OK
    print(outcome.report.table())
    if outcome.golden is not None:
        print(outcome.golden.table())
    assert outcome.artifact is not None
    print(f"wrote {', '.join(str(p) for p in outcome.written)}")
    return EXIT_OK


def backend_text(args: argparse.Namespace) -> str:
    """Fold --min-shapes/--opt-shapes/--max-shapes/--batch into the backend's options."""
    from converter.pipeline_text import format_step, parse_step

    extra = {k: getattr(args, k) for k in ("min_shapes", "opt_shapes", "max_shapes", "batch") if getattr(args, k) is not None}
    if not extra:
        return str(args.backend)
    step = parse_step(args.backend)
    for key, value in extra.items():
        if key in step.options:
            raise UsageError(f"--{key.replace('_', '-')} is given twice (also in -b {args.backend})")
        step.options[key] = value
    return format_step(step)


def cmd_check(args: argparse.Namespace) -> int:
    from converter.model_io import load_model
    from converter.options import build_options
    from converter.pipeline_text import parse_step
    from converter.plugin_manager import load_plugins

    step = parse_step(args.backend)
    cls = load_plugins().backends.get(step.name).cls
    backend = cls(build_options(cls.Options, step.options, f"backend '{step.name}'"))
    findings = backend.lint(load_model(args.model).proto)
    if args.json:
        _emit_json({"backend": cls.name, "findings": [f.to_json() for f in findings]})
    else:
        for f in findings:
            print(f.line())
        errors = sum(f.severity == "error" for f in findings)
        print(f"{args.model}: {errors} error(s), {len(findings) - errors} warning(s) for backend '{cls.name}'" if findings else f"{args.model}: clean for backend '{cls.name}'")
    blocking = [f for f in findings if f.severity == "error" or not args.ignore_warnings]
    return EXIT_CHECK_FAILED if blocking else EXIT_OK


def _option_rows(cls: type) -> list[dict[str, Any]]:
    from converter.options import option_infos

    return [
        {"name": i.name, "type": i.type_text, "default": None if i.default is dataclasses.MISSING else (list(i.default) if isinstance(i.default, tuple) else i.default), "help": i.help}
        for i in option_infos(cls)
    ]


def cmd_list(args: argparse.Namespace) -> int:
    from converter.plugin_manager import load_plugins

    plugins = load_plugins()
    show_passes = args.command in ("passes", "plugins")
    show_backends = args.command in ("backends", "plugins")
    data: dict[str, Any] = {}
    if show_passes:
        data["passes"] = [{"name": e.cls.name, "summary": e.cls.summary, "source": e.source, "options": _option_rows(e.cls.Options)} for e in plugins.passes.entries()]
    if show_backends:
        rows = []
        for e in plugins.backends.entries():
            a = e.cls.availability()
            rows.append({"name": e.cls.name, "summary": e.cls.summary, "source": e.source, "available": a.ok, "reason": a.reason, "versions": a.versions, "options": _option_rows(e.cls.Options)})
        data["backends"] = rows
    data["failed_plugins"] = [{"name": f.name, "error": f.error} for f in plugins.failures]
    if args.json:
        _emit_json(data)
        return EXIT_OK
    for section in ("passes", "backends"):
        if section not in data:
            continue
        print(f"{section}:")
        for row in data[section]:
            status = ""
            if section == "backends":
                status = "  [available]" if row["available"] else f"  [unavailable: {row['reason']}]"
            print(f"  {row['name']}  ({row['source']}){status}\n      {row['summary']}")
            for o in row["options"]:
                print(f"      {o['name']}: {o['type']} = {o['default']}  {o['help']}")
    if data["failed_plugins"]:
        print("plugins that failed to load:")
        for f in data["failed_plugins"]:
            print(f"  {f['name']}: {f['error']}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from converter.inspect_model import format_summary, summarize
    from converter.model_io import load_model

    summary = summarize(load_model(args.model))
    if args.json:
        _emit_json(summary)
    else:
        print(format_summary(summary))
    return EXIT_OK


def cmd_golden_record(args: argparse.Namespace) -> int:
    from converter.feeds import check_feeds, load_npz, parse_shapes, seeded_feeds
    from converter.golden import DataSet, record_case
    from converter.graph_info import graph_inputs, graph_outputs
    from converter.model_io import load_model
    from converter.ort_session import make_session, run_session, session_options

    loaded = load_model(args.model)
    specs = graph_inputs(loaded.proto)
    if args.inputs is not None:
        feeds = load_npz(args.inputs)
        check_feeds(feeds, specs, where=str(args.inputs))
    else:
        logging.getLogger("converter").warning("recording with seeded random inputs: real inputs catch more regressions")
        feeds = seeded_feeds(specs, args.seed, parse_shapes(args.input_shapes))
    sess = make_session(loaded.proto, options=session_options(opt_level="disable"))
    outputs = run_session(sess, feeds)
    case = record_case(
        args.output, model_path=loaded.path, model_sha256=loaded.sha256, data_sets=[DataSet(feeds, outputs)],
        input_names=[s.name for s in specs], output_names=[o.name for o in graph_outputs(loaded.proto)],
        recipe=args.recipe, copy_model=args.copy_model, force=args.force,
    )
    if args.json:
        _emit_json({"case": str(case.path), "manifest": case.manifest})
    else:
        print(f"recorded golden case {case.path} ({len(case.data_sets)} data set, outputs: {', '.join(case.manifest['outputs'])})")
    return EXIT_OK


def cmd_golden_check(args: argparse.Namespace) -> int:
    from converter.artifacts import artifact_from_disk
    from converter.golden import check_case, load_case
    from converter.plugin_manager import load_plugins

    plugins = load_plugins()
    artifact = artifact_from_disk(args.artifact, args.backend)
    case = load_case(args.case)
    cls = plugins.backends.get(artifact.backend).cls
    avail = cls.availability()
    if not avail:
        from converter.errors import BackendUnavailable

        raise BackendUnavailable(f"backend '{cls.name}' is unavailable: {avail.reason}")
    result = check_case(cls(cls.Options()).load(artifact), case, args.precision)
    if args.json:
        _emit_json(result.to_json())
    else:
        print(result.table())
    if not result:
        from converter.errors import CheckFailed

        raise CheckFailed(f"golden check failed: {args.artifact} does not match case '{case.name}' at {args.precision}")
    return EXIT_OK


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if getattr(args, "debug", False) else logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="convert: %(levelname)s: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("converter").setLevel(level)


def _dispatch(argv: Sequence[str]) -> tuple[argparse.Namespace, Any]:
    if argv and argv[0] in SUBCOMMANDS:
        args = sub_parser().parse_args(argv)
        if args.command == "inspect":
            return args, cmd_inspect
        if args.command == "check":
            return args, cmd_check
        if args.command == "debug":
            from converter import cli_debug

            return args, cli_debug.handler(args)
        if args.command == "export":
            from converter import cli_export

            return args, cli_export.cmd_export
        if args.command == "golden":
            return args, cmd_golden_record if args.golden_command == "record" else cmd_golden_check
        return args, cmd_list
    return convert_parser().parse_args(argv), cmd_convert


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args, handler = _dispatch(argv)
        _configure_logging(args)
        return int(handler(args))
    except ConverterError as exc:
        if debug:
            traceback.print_exc()
        print(f"convert: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"convert: internal error: {type(exc).__name__}: {exc} (a bug in converter; rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
