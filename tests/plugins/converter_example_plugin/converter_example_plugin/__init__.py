"""A third-party plugin: the ``strip_docs`` pass (with a ``--strip-docs-keep`` flag), the ``reference``
backend (onnx.reference) and the ``opcount`` subcommand. It touches nothing in converter's core:
everything arrives through the hooks in ``converter.hookspecs``."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from converter.backend_api import Artifact, Availability, Backend, EmitContext, Finding, Runner, Severity, TensorSpec
from converter.command_api import Command, emit_json
from converter.errors import BackendError, describe_exception
from converter.flags import PassInput
from converter.graph_info import graph_inputs, graph_outputs, iter_graphs
from converter.hookspecs import hookimpl
from converter.model_io import load_model, write_model
from converter.options import NoOptions
from converter.pass_api import Pass, PassContext, PassResult

KEEP = PassInput[str | None](
    key="strip_docs_keep", flag="--strip-docs-keep", default=None, metavar="TEXT", group="example plugin",
    help="strip_docs keeps doc strings that contain TEXT",
)


@dataclass(frozen=True)
class StripDocsOptions:
    metadata: bool = field(default=False, metadata={"help": "also drop metadata_props"})


class StripDocsPass(Pass[StripDocsOptions]):
    name = "strip_docs"
    summary = "Remove doc strings (and optionally metadata) from the model."
    Options = StripDocsOptions

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        keep = ctx.inputs.get(KEEP)
        removed = 0
        for holder in [model, *(x for g in iter_graphs(model.graph) for x in (g, *g.node))]:
            if holder.doc_string and not (keep and keep in holder.doc_string):
                holder.doc_string = ""
                removed += 1
        if self.options.metadata and len(model.metadata_props):
            removed += len(model.metadata_props)
            del model.metadata_props[:]
        return PassResult(model, removed > 0, facts={"doc_strings_removed": removed})


REFERENCE_ERRORS = (NotImplementedError, RuntimeError, ValueError, TypeError)
"""What onnx.reference raises for an op (or an op version) it does not implement, e.g. DequantizeLinear before opset 19."""


class ReferenceRunner(Runner):
    def __init__(self, path: Path) -> None:
        model = onnx.load(str(path))
        try:
            self.evaluator = ReferenceEvaluator(model)
        except REFERENCE_ERRORS as exc:  # an op (or op version) onnx.reference lacks: refused, not a crash
            raise BackendError(f"onnx.reference cannot run {path.name}: {describe_exception(exc)}") from exc
        self.inputs: list[TensorSpec] = graph_inputs(model)
        self.outputs: list[TensorSpec] = graph_outputs(model)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.evaluator.run(None, feeds)
        except REFERENCE_ERRORS as exc:
            raise BackendError(f"onnx.reference failed to run the model: {describe_exception(exc)}") from exc
        return {o.name: np.asarray(r) for o, r in zip(self.outputs, results)}


class ReferenceBackend(Backend[NoOptions]):
    name = "reference"
    summary = "The model as is, run by onnx's pure-Python reference evaluator (slow, exact semantics)."
    Options = NoOptions

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, "", {"onnx": onnx.__version__})

    def lint(self, model: onnx.ModelProto) -> list[Finding]:
        try:
            ReferenceEvaluator(model)  # builds the op list only: it says which op (or op version) this onnx lacks
        except REFERENCE_ERRORS as exc:
            return [Finding("unsupported-op", Severity.ERROR, "model", f"onnx {onnx.__version__}'s reference evaluator cannot run it: {describe_exception(exc)}")]
        return []

    def emit(self, model: onnx.ModelProto, ctx: EmitContext) -> Artifact:
        out = ctx.staging / ctx.file_name
        files = write_model(model, out)
        manifest = {"backend": self.name, "onnx_version": onnx.__version__, "source_model_sha256": ctx.source_sha256, "pipeline": ctx.pipeline}
        return Artifact(self.name, out, manifest, files)

    def load(self, artifact: Artifact) -> Runner:
        return ReferenceRunner(artifact.path)


@hookimpl
def converter_register_passes(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add(StripDocsPass)


@hookimpl
def converter_register_backends(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add(ReferenceBackend)


class OpCountCommand(Command):
    name = "opcount"
    help = "count the ops of a model (an example plugin's subcommand)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", type=Path)
        parser.add_argument("--top", type=int, default=5, help="how many op types to list (default 5)")

    def run(self, args: argparse.Namespace, plugins) -> int:  # type: ignore[no-untyped-def]
        counts = Counter(n.op_type for g in iter_graphs(load_model(args.model).proto.graph) for n in g.node)
        top = counts.most_common(args.top)
        if args.json:
            emit_json(dict(top))
        else:
            for op, n in top:
                print(f"{op} {n}")
        return 0


@hookimpl
def converter_register_commands(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add(OpCountCommand)


@hookimpl
def converter_add_options(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add_pass_input(KEEP)
