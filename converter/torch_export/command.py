"""``convert export``: PyTorch module → checked ONNX model (and, with ``--then``, on through the main flow).

torch is imported only when the command runs (never at CLI start-up); without it the command
exits 2 saying how to install it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
from pathlib import Path
from typing import Any

from converter import reporting
from converter.command_api import Command
from converter.convert_job import GoldenFailed
from converter.errors import EXIT_OK, UsageError
from converter.plugin_manager import Plugins
from converter.torch_export.job import EXPORT_TOLERANCE, ExportCheckFailed, ExportRequest, plan, run_export
from converter.torch_export.then import parse_then, run_then
from converter.torch_export.torch_env import require_torch

DESCRIPTION = """Export a PyTorch model to ONNX and check it against torch.

SPEC names a callable that returns a torch.nn.Module: package.module:factory (imported from the
current folder or PYTHONPATH), e.g. mypkg.models:resnet18. After the export, the model is
checked with onnx.checker (full_check), then torch and ONNX Runtime run the same seeded inputs at
batch 1 and 4 and every output is compared (a --static export: at the shapes given; with --dynamic:
at two sizes of each dynamic axis, --batches for 'batch', the --input size and size+3 for the others,
or --sizes); beyond the tolerance the command exits 1 and writes nothing. The opset actually
written is reported; a Split in opset-18 form inside an older opset (a dynamo exporter defect) is
rewritten to the declared opset.
"""
EPILOG = """tolerance (torch vs ONNX Runtime, fp32; the golden fp32 policy): elementwise
|ort - torch| <= atol * max|torch| + rtol * |torch| with atol 1e-5, rtol 1e-4; cosine >= 0.99999;
top-1 agreement 1.0 on [batch, classes] outputs. --golden stores the same tolerance as the case's fp32 policy.

examples:
  convert export mypkg.models:small_cnn -o cnn.onnx --input x:1x3x32x32:float32
  convert export mypkg.models:encoder -o enc.onnx --input ids:1x16:int64:0..99 --input mask:1x16:int64 --opset 17
  convert export mypkg.models:encoder -o enc.onnx --input ids:1x16:int64:0..99 --input mask:1x16:int64 \\
      --dynamic ids:0=batch,1=seq --dynamic mask:0=batch,1=seq --sizes seq=8,17
  convert export examples.efficientnet_lite0:efficientnet_lite0 -o lite0.onnx --input x:1x3x224x224 --golden golden/lite0 \\
      --then '-p infer_shapes,cleanup -b ort -o lite0.ort.onnx'

exit codes: 0 ok, 1 torch and ONNX Runtime disagree (or the --then golden check fails), 2 usage/bad model
(including: torch not installed, pip install 'converter[torch]'), 3 backend unavailable (--then), 4 internal error.
"""


def _tolerance_value(text: str) -> float | str:
    if text.lower() == "off":
        return "off"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number (or 'off')") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be >= 0")
    return value


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' must be integers separated by commas, e.g. 1,4") from None
    return values


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="package.module:factory returning an nn.Module")
    reporting.add_report_flag(p)
    p.add_argument("-o", "--output", type=Path, help="the .onnx file to write (default: FACTORY.onnx in the current folder)")
    p.add_argument("--weights", type=Path, metavar="FILE", help="a state dict to load into the model (strict)")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME:SHAPE:DTYPE[:LOW..HIGH]",
                   help="one per forward() argument, in order, e.g. x:1x3x224x224:float32, ids:1x16:int64:0..999 (ints default to 0..1); dim 0 is the batch unless --dynamic says otherwise")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo", help="torch.onnx.export(dynamo=True), or the legacy TorchScript exporter with dynamic_axes (default: dynamo)")
    p.add_argument("--opset", type=int, help="ONNX opset to ask for (default: the exporter's); the opset written is reported")
    p.add_argument("--static", action="store_true", help="keep every shape as given (default: dim 0 of every input is a dynamic 'batch')")
    p.add_argument("--dynamic", action="append", default=[], metavar="NAME:AXIS=SYMBOL[,AXIS=SYMBOL]",
                   help="the dynamic axes of one input, e.g. ids:0=batch,1=seq (repeat per input; inputs not named are static; "
                        "the same SYMBOL on several inputs is the same size); replaces the default dynamic batch")
    p.add_argument("--sizes", action="append", default=[], metavar="SYMBOL=A,B",
                   help="sizes of a dynamic axis for the torch-vs-ONNX Runtime check, e.g. seq=8,17 (default: the --input size and size+3; batch: --batches)")
    p.add_argument("--output-names", metavar="A,B", help="names for the model's outputs (default: output, or output_0, output_1, ...)")
    p.add_argument("--batches", type=_batches, default=(1, 4), metavar="1,4", help="sizes of 'batch' for the torch-vs-ONNX Runtime check (default 1,4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample inputs (default 0)")
    tol = p.add_argument_group("tolerance of the torch-vs-ONNX Runtime check (see below; 'off' disables a criterion)")
    tol.add_argument("--tolerance-atol", type=_tolerance_value, metavar="X", help="elementwise, times max|torch| (default 1e-5)")
    tol.add_argument("--tolerance-rtol", type=_tolerance_value, metavar="X", help="elementwise, times |torch| (default 1e-4)")
    tol.add_argument("--tolerance-cosine", type=_tolerance_value, metavar="X", help="minimum cosine similarity (default 0.99999)")
    tol.add_argument("--tolerance-top1", type=_tolerance_value, metavar="X", help="minimum top-1 agreement on class scores (default 1.0)")
    p.add_argument("--keep-failed", action="store_true", help="write the model even when the check fails (still exit 1)")
    p.add_argument("--golden", type=Path, metavar="DIR", help="record torch's outputs on the check's inputs as a golden case in DIR")
    p.add_argument("--force", action="store_true", help="replace an existing --golden case")
    p.add_argument("--then", metavar="'ARGS'", help="continue with 'convert EXPORTED ARGS', e.g. '-p infer_shapes,cleanup -b ort -o m.ort.onnx' (uses --golden as its golden check; a single flag needs '=': --then=--verify)")


def _quiet_torch(args: argparse.Namespace) -> None:
    """torch and onnxscript log progress and optional-dependency notes at WARNING; show them only with --debug."""
    level = logging.DEBUG if args.debug else logging.ERROR
    for name in ("torch", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(level)


def _request(args: argparse.Namespace) -> ExportRequest:
    flags = {"atol": args.tolerance_atol, "rtol": args.tolerance_rtol, "min_cosine": args.tolerance_cosine, "min_top1": args.tolerance_top1}
    tol = dataclasses.replace(EXPORT_TOLERANCE, **{k: (None if v == "off" else v) for k, v in flags.items() if v is not None})
    recipe = ["convert", "export", args.spec, *(f"--input={i}" for i in args.inputs), f"--exporter={args.exporter}"]
    recipe += [f"--opset={args.opset}"] if args.opset is not None else []
    recipe += ["--static"] if args.static else []
    recipe += [f"--dynamic={d}" for d in args.dynamic]
    recipe += [f"--weights={args.weights}"] if args.weights else []
    return ExportRequest(
        spec=args.spec, inputs=list(args.inputs), output=args.output, weights=args.weights, opset=args.opset, exporter=args.exporter,
        static=args.static, batches=tuple(args.batches), seed=args.seed, tolerance=tol,
        output_names=[n.strip() for n in args.output_names.split(",")] if args.output_names else None,
        golden=args.golden, force=args.force, keep_failed=args.keep_failed, recipe=shlex.join(recipe), dynamic=list(args.dynamic), sizes=list(args.sizes),
    )


def cmd_export(args: argparse.Namespace, plugins: Plugins) -> int:
    if args.force and args.golden is None:
        raise UsageError("--force replaces a --golden case; give --golden DIR")
    req = _request(args)
    planned = plan(req)
    out = _Output(args.json, args.report, [p for p in (args.weights, planned.output) if p is not None])
    reporting.check_report_path(out.report, out.protected)
    then_args = None
    if args.then is not None:
        then_args = parse_then(args.then, planned.output, req.golden, plugins)
    require_torch()
    _quiet_torch(args)  # after the import: torch sets its loggers' levels when it loads
    try:
        outcome = run_export(req, planned)
    except ExportCheckFailed as exc:
        hints = [f"torch warned during the export (a cause?): {w}" for w in exc.outcome.exported.warnings if not w.startswith(("DeprecationWarning", "FutureWarning"))]
        _show({"export": exc.outcome.to_json()}, [exc.outcome.summary(), exc.outcome.verify.table(), *hints], out)
        raise
    texts = [outcome.summary(), outcome.verify.table()]
    texts.append(f"wrote {', '.join(str(p) for p in outcome.written)}")
    if outcome.golden is not None:
        texts.append(f"recorded golden case {outcome.golden.path} (reference: torch {outcome.torch_version}; {len(outcome.golden.data_sets)} data sets)")
    data: dict[str, Any] = {"export": outcome.to_json()}
    if then_args is None:
        _show(data, texts, out)
        return EXIT_OK
    texts.append(f"\n--then: convert {shlex.quote(str(then_args.model))} {args.then}")
    return _then(then_args, plugins, data, texts, out)


def _then(then_args: argparse.Namespace, plugins: Plugins, data: dict[str, Any], texts: list[str], out: _Output) -> int:
    try:
        result = run_then(then_args, plugins)
    except GoldenFailed as exc:
        data["then"] = exc.outcome.to_json()
        assert exc.outcome.golden is not None
        _show(data, [*texts, exc.outcome.report.table(), exc.outcome.golden.table()], out)
        raise
    except Exception:
        _show(data, texts, out)
        raise
    data["then"] = result.to_json()
    texts.append(result.report.table())
    if result.golden is not None:
        texts.append(result.golden.table())
    texts.append(f"wrote {', '.join(str(p) for p in result.written)}")
    _show(data, texts, out)
    return EXIT_OK


def _show(data: dict[str, Any], texts: list[str], out: _Output) -> None:
    if out.json:
        reporting.emit("export", data)
    else:
        print("\n".join(texts), flush=True)
    if out.report is not None:
        reporting.write_page(out.report, reporting.document("export", data), out.protected)


@dataclasses.dataclass
class _Output:
    """Where this run's report goes: stdout as JSON or text, and the ``--report`` page."""

    json: bool
    report: Path | None = None
    protected: list[Path] = dataclasses.field(default_factory=list)


class ExportCommand(Command):
    name = "export"
    help = "export a PyTorch model to ONNX, checked against torch"
    description = DESCRIPTION
    epilog = EPILOG

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        _add_arguments(parser)

    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        return cmd_export(args, plugins)
