"""The arguments of the main command, ``convert MODEL ...``: its parser and the request it makes.

The core flags are here; flags that plugins add (``converter_add_options``: pass inputs
such as ``--calib-data``, backend flags such as TensorRT's ``--min-shapes``) come from the
loaded plugins. ``convert`` and ``export --then`` both parse with :func:`convert_parser`
and build the request with :func:`request_from_args`, so every flag means the same in both.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from converter.command_api import ArgParser, add_common
from converter.convert_job import ConvertRequest
from converter.errors import UsageError
from converter.pipeline_text import format_step, parse_step
from converter.plugin_manager import Plugins
from converter.reporting import add_report_flag
from converter.version import __version__

EPILOG = (
    "Other subcommands: {commands} (each has --help). "
    "Exit codes: 0 ok, 1 check failed, 2 usage/bad input, 3 backend unavailable, 4 internal error, 130/143 interrupted."
)


def convert_parser(plugins: Plugins) -> argparse.ArgumentParser:
    p = ArgParser(
        prog="convert",
        description="Run passes over an ONNX model and emit a runnable artifact through a backend.",
        epilog=EPILOG.format(commands=", ".join(f"convert {n}" for n in plugins.commands.names())),
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
    p.add_argument("--version", action="version", version=f"converter {__version__}")
    add_report_flag(p)
    add_common(p)
    core = {s for a in p._actions for s in a.option_strings}
    plugins.options.add_to_parser(p, lambda flag: flag in core)
    return p


def backend_text(args: argparse.Namespace, plugins: Plugins) -> str:
    """``-b`` with the values of plugin backend flags (``--min-shapes`` ...) folded in as options."""
    return fold_backend_options(str(args.backend), plugins.options.backend_flag_values(args), f"-b {args.backend}")


def fold_backend_options(text: str, extra: Mapping[str, tuple[str, str]], where: str) -> str:
    """``text`` (``name{k=v}``) with ``extra`` options (option -> (what gave it, value)) added; one given twice is a usage error."""
    if not extra:
        return text
    step = parse_step(text)
    for option, (given_as, value) in extra.items():
        if option in step.options:
            raise UsageError(f"{given_as} is given twice (also in {where})")
        step.options[option] = value
    return format_step(step)


def request_from_args(args: argparse.Namespace, plugins: Plugins) -> ConvertRequest:
    """The ConvertRequest that ``convert MODEL ...`` (or ``export --then``) asks for."""
    return ConvertRequest(
        model=args.model, pipeline=args.passes, backend=backend_text(args, plugins), output=args.output, golden=args.golden,
        precision=args.precision, verify=args.verify, inputs=args.inputs, input_shapes=args.input_shapes,
        check=args.check, keep_failed=args.keep_failed, seed=args.seed, pass_inputs=plugins.options.pass_input_values(args),
    )
