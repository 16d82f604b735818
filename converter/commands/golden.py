"""``convert golden record | check``: store reference outputs explicitly, and compare an artifact with them."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import onnx

from converter import reporting
from converter.artifacts import artifact_from_disk
from converter.backend_api import Artifact
from converter.command_api import Command, add_common
from converter.convert_job import model_precision
from converter.errors import EXIT_OK, BackendUnavailable, CheckFailed, UsageError, describe_exception
from converter.feeds import check_feeds, load_npz, parse_shapes, seeded_feeds
from converter.golden import DataSet, check_case, load_case, record_case
from converter.graph_info import graph_inputs, graph_outputs
from converter.model_io import load_model
from converter.ort_session import make_session, run_session, session_options
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
        reporting.emit("golden record", {"case": str(case.path), "manifest": case.manifest})
    else:
        print(f"recorded golden case {case.path} ({len(case.data_sets)} data set, outputs: {', '.join(case.manifest['outputs'])})")
    return EXIT_OK


def check(args: argparse.Namespace, plugins: Plugins) -> int:
    reporting.check_report_path(args.report, [args.artifact])
    artifact = artifact_from_disk(args.artifact, args.backend)
    case = load_case(args.case)
    cls = plugins.backends.get(artifact.backend).cls
    avail = cls.availability()
    if not avail:
        raise BackendUnavailable(f"backend '{cls.name}' is unavailable: {avail.reason}")
    precision = args.precision or artifact_precision(artifact)
    result = check_case(cls(cls.Options()).load(artifact), case, precision)
    data = {"artifact": {"path": str(artifact.path), "backend": artifact.backend, "manifest": artifact.manifest}, **result.to_json()}
    if args.json:
        reporting.emit("golden check", data)
    else:
        print(result.table())
    if args.report:
        reporting.write_page(args.report, reporting.document("golden check", data), [args.artifact, *artifact.files])
    if not result:
        raise CheckFailed(f"golden check failed: {args.artifact} does not match case '{case.name}' at {precision}")
    return EXIT_OK


def artifact_precision(artifact: Artifact) -> str:
    """The tolerance class an artifact is judged by: its graph's (an .onnx), else its manifest's pipeline's."""
    if artifact.path.suffix == ".onnx":
        try:
            return model_precision(onnx.load(str(artifact.path), load_external_data=False))
        except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
            raise UsageError(f"{artifact.path}: not a readable ONNX model ({describe_exception(exc, 120)}); pass --precision to check it anyway") from exc
    pipeline = str(artifact.manifest.get("pipeline") or "")
    return "int8" if re.search(r"(^|,)\s*qdq\b", pipeline) else "fp16" if re.search(r"(^|,)\s*fp16\b", pipeline) else "fp32"


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
