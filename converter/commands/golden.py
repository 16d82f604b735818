"""``convert golden record | check``: store reference outputs explicitly, and compare an artifact with them."""

from __future__ import annotations

import argparse
from pathlib import Path

from converter import golden, reporting
from converter.artifacts import artifact_from_disk
from converter.command_api import Command, add_common
from converter.errors import EXIT_OK, CheckFailed
from converter.plugin_manager import Plugins


def _add_record(rec: argparse.ArgumentParser) -> None:
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
    add_common(rec)


def _add_check(chk: argparse.ArgumentParser) -> None:
    chk.add_argument("artifact", type=Path)
    chk.add_argument("case", type=Path)
    chk.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                     help="tolerance policy to judge by (default: what the artifact is: Q/DQ -> int8, float16 -> fp16, else fp32)")
    chk.add_argument("--backend", help="backend that made the artifact (default: from its manifest; bare .onnx: ort)")
    reporting.add_report_flag(chk)
    add_common(chk)


def record(args: argparse.Namespace) -> int:
    """``golden record``: :func:`converter.golden.record` with the parsed flags."""
    case = golden.record(
        args.model, args.output, inputs=args.inputs, random_inputs=args.random_inputs, input_shapes=args.input_shapes, seed=args.seed,
        recipe=args.recipe, copy_model=args.copy_model, force=args.force,
    )
    if args.json:
        reporting.emit("golden record", {"case": str(case.path), "manifest": case.manifest})
    else:
        print(f"recorded golden case {case.path} ({len(case.data_sets)} data set, outputs: {', '.join(case.manifest['outputs'])})")
    return EXIT_OK


def check(args: argparse.Namespace, plugins: Plugins) -> int:
    """``golden check``: :func:`converter.golden.check` with the parsed flags (the artifact opened once); exit 1 when it fails."""
    reporting.check_report_path(args.report, [args.artifact])
    artifact = artifact_from_disk(args.artifact, args.backend)  # opened (and its manifest verified) once
    result = golden.check_artifact(artifact, args.case, precision=args.precision, plugins=plugins)
    data = {"artifact": {"path": str(artifact.path), "backend": artifact.backend, "manifest": artifact.manifest}, **result.to_json()}
    if args.json:
        reporting.emit("golden check", data)
    else:
        print(result.table())
    if args.report:
        reporting.write_page(args.report, reporting.document("golden check", data), [args.artifact, *artifact.files])
    if not result:
        raise CheckFailed(f"golden check failed: {args.artifact} does not match case '{result.case}' at {result.precision}")
    return EXIT_OK


class GoldenCommand(Command):
    name = "golden"
    help = "record or check golden cases"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="golden_command", required=True, parser_class=type(parser))
        rec = sub.add_parser("record", help="run MODEL on ONNX Runtime and store inputs and reference outputs",
                             description="Record a golden case (explicit: the only way reference outputs change).")
        _add_record(rec)
        chk = sub.add_parser("check", help="run an artifact and compare with a golden case", description="Exit 1 when any output misses its tolerance.")
        _add_check(chk)

    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        return record(args) if args.golden_command == "record" else check(args, plugins)
