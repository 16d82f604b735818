"""``--then 'PIPELINE_ARGS'``: after the export, continue with the main flow in the same command.

The text is the rest of a ``convert MODEL ...`` command line (``-p``, ``-b``, ``-o``, ``--verify``, ...),
parsed by the main command's own parser with the exported model as MODEL, so every flag means
what it means there. The export's ``--golden`` case (torch's outputs) is the golden check.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from converter.convert_args import backend_text, convert_parser, request_from_args
from converter.convert_job import ConvertOutcome, convert, make_backend
from converter.errors import UsageError
from converter.pass_manager import build_passes
from converter.pipeline_text import parse_pipeline
from converter.plugin_manager import Plugins

_NOT_HERE = {"json": "--json", "debug": "--debug", "verbose": "-v/--verbose"}


def parse_then(text: str, exported: Path, export_golden: Path | None, plugins: Plugins) -> argparse.Namespace:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--then '{text}' cannot be split into arguments: {exc}") from None
    if any(w in ("-h", "--help", "--version") for w in words):
        raise UsageError("--then takes the arguments of 'convert MODEL ...' (see 'convert --help'), not -h/--version")
    if words and not words[0].startswith("-"):
        raise UsageError(f"--then '{text}': the model is the exported one; start with flags, e.g. --then '-p infer_shapes,cleanup -b ort'")
    args = convert_parser(plugins).parse_args([str(exported), *words])
    misplaced = [flag for key, flag in _NOT_HERE.items() if getattr(args, key)]
    if misplaced:
        raise UsageError(f"put {', '.join(misplaced)} on the export command, not inside --then")
    if args.golden is not None and export_golden is not None:
        raise UsageError("--golden is given to the export and inside --then; give it once (the export's case holds torch's outputs)")
    if args.golden is None:
        args.golden = export_golden
    # unknown passes, options and backends fail now, before minutes go into the export
    build_passes(parse_pipeline(args.passes), plugins.passes)
    make_backend(backend_text(args, plugins), plugins)
    return args


def run_then(args: argparse.Namespace, plugins: Plugins) -> ConvertOutcome:
    """The main flow on the exported model, exactly as ``convert`` runs it."""
    return convert(request_from_args(args, plugins), plugins)
