"""The interface an artifact must keep: input/output names, dtypes and ranks, and the dims a pass left alone.

Checked after every emit (``convert`` exits 1 naming what changed): an artifact that needs other
feeds than the model it came from is not a faithful conversion. Only two differences are allowed:
a dim the artifact leaves symbolic where the model had a number (it accepts more), and inputs with
initializer defaults (IR < 4 exports list every weight as an input) that a backend turned into plain
weights; required inputs must stay exactly as they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from converter.backend_api import TensorSpec
from converter.graph_info import graph_inputs, graph_outputs


def _dims_text(spec: TensorSpec) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"


def _compare(kind: str, want: Sequence[TensorSpec], got: Sequence[TensorSpec]) -> list[str]:
    problems = []
    have = {s.name: s for s in got}
    for spec in want:
        other = have.get(spec.name)
        if other is None:
            problems.append(f"{kind} '{spec.name}' is missing")
            continue
        if spec.dtype not in ("unknown", other.dtype) and other.dtype != "unknown":
            problems.append(f"{kind} '{spec.name}' changed dtype {spec.dtype} → {other.dtype}")
        if spec.shape and other.shape and len(spec.shape) != len(other.shape):
            problems.append(f"{kind} '{spec.name}' changed rank {_dims_text(spec)} → {_dims_text(other)}")
            continue
        for axis, (a, b) in enumerate(zip(spec.shape, other.shape)):
            if isinstance(b, int) and b > 0 and a != b:  # a fixed dim where the model had another size or a symbol
                problems.append(f"{kind} '{spec.name}' dim {axis} changed {_dims_text(spec)} → {_dims_text(other)}")
                break
    extra = sorted(set(have) - {s.name for s in want})
    problems += [f"{kind} '{name}' is new (the model had no such {kind})" for name in extra]
    return problems


def interface_changes(model: onnx.ModelProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> list[str]:
    """What an artifact with ``inputs``/``outputs`` (required inputs only) changed against ``model``; empty when none."""
    return _compare("input", graph_inputs(model), inputs) + _compare("output", graph_outputs(model), outputs)


def manifest_specs(manifest: dict, key: str) -> list[TensorSpec] | None:
    """The ``inputs``/``outputs`` a backend recorded in its manifest, or None."""
    items = manifest.get(key)
    if not isinstance(items, list):
        return None
    return [TensorSpec.from_json(d) for d in items]


def plain_initializers(model: onnx.ModelProto) -> list[str]:
    """Turn inputs with initializer defaults into plain initializers (dropped from the inputs); returns their names.

    IR 3 required every initializer to be a graph input, so old exporters made every weight an
    overridable input. Runtimes cannot fold overridable values, and ONNX Runtime's saved optimized
    model keeps such an input while dropping the initializer it folded, so the artifact would
    *require* it. Nobody feeds weights at inference time: they become constants (IR bumped to 4).
    """
    inits = {t.name for t in model.graph.initializer}
    keep = [vi for vi in model.graph.input if vi.name not in inits]
    dropped = [vi.name for vi in model.graph.input if vi.name in inits]
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    return dropped
