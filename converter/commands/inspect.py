"""``convert inspect``: what a model is, at a glance."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from converter import reporting
from converter.command_api import Command
from converter.errors import EXIT_OK
from converter.graph_info import graph_inputs, graph_outputs, initializer_bytes, node_count, op_histogram
from converter.model_io import LoadedModel, load_model
from converter.plugin_manager import Plugins
from converter.text_table import printable


def summarize(loaded: LoadedModel) -> dict[str, Any]:
    m = loaded.proto
    return {
        "path": str(loaded.path),
        "sha256": loaded.sha256,
        "file_bytes": loaded.file_size,
        "ir_version": m.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "inputs": [s.to_json() for s in graph_inputs(m)],
        "outputs": [s.to_json() for s in graph_outputs(m)],
        "nodes": node_count(m),
        "initializers": len(m.graph.initializer),
        "weight_bytes": initializer_bytes(m),
        "external_data": [str(p) for p in loaded.external_data_files],
        "ops": dict(op_histogram(m).most_common()),
        "metadata": {p.key: p.value for p in m.metadata_props},
    }


def _dims(shape: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"model      {s['path']}",
        f"sha256     {s['sha256']}",
        f"size       {s['file_bytes'] / 1e6:.2f} MB ({s['weight_bytes'] / 1e6:.2f} MB weights in {s['initializers']} initializers)",
        f"ir/opsets  ir {s['ir_version']}; " + ", ".join(f"{d} {v}" for d, v in s["opsets"].items()),
        f"producer   {s['producer'] or '-'}",
        f"external   {', '.join(s['external_data']) or 'none'}",
        "inputs",
        *(f"  {i['name']}: {i['dtype']} {_dims(i['shape'])}" for i in s["inputs"]),
        "outputs",
        *(f"  {o['name']}: {o['dtype']} {_dims(o['shape'])}" for o in s["outputs"]),
        f"nodes      {s['nodes']}",
        "ops        " + ", ".join(f"{k} {v}" for k, v in s["ops"].items()),
    ]
    return "\n".join(printable(line) for line in lines)


class InspectCommand(Command):
    name = "inspect"
    help = "summarize a model"
    description = "Opset, inputs/outputs with symbolic dims, op histogram, size."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", type=Path)

    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        summary = summarize(load_model(args.model))
        if args.json:
            reporting.emit("inspect", summary)
        else:
            print(format_summary(summary))
        return EXIT_OK
