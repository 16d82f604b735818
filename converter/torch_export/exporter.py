"""torch.onnx.export with either exporter, a dynamic batch by default (any axes with ``--dynamic``).

- ``dynamo``: ``torch.export`` + onnxscript (``dynamo=True``); each symbol is one ``Dim(symbol)``,
  shared by every axis that names it, and the exporter carries it through the graph symbolically.
  The written dim names are the symbols (dims torch names otherwise are renamed, see dim_names.py).
- ``torchscript``: the legacy tracing exporter (``dynamo=False``) with ``dynamic_axes``; the output
  axes that follow a symbol are found by running the model with that symbol one size larger.

A dynamic export traces each symbol at size >= 2: torch.export specializes sizes 0 and 1, so a
sample size of 1 would pin the axis. Verification then runs at other sizes (batch 1 and 4).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from converter.errors import ConverterError, ModelError, UsageError, describe_exception, shorten
from converter.torch_export.dim_names import name_dims
from converter.torch_export.dynamic import DynamicAxes, given_sizes, trace_sizes
from converter.torch_export.inputs import InputSpec, sample_feeds

EXPORTERS = ("dynamo", "torchscript")
log = logging.getLogger("converter.torch_export")


@dataclass
class Exported:
    proto: onnx.ModelProto
    exporter: str
    output_names: list[str]
    trace_sizes: dict[str, int]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)

    @property
    def trace_batch(self) -> int | None:
        return self.trace_sizes.get("batch")


def flatten_outputs(torch: Any, out: Any) -> list[Any]:
    """The model's outputs as a flat list of tensors (tuples, lists and dicts flattened like the exporters do)."""
    from torch.utils._pytree import tree_leaves

    leaves = tree_leaves(out)
    bad = [type(x).__name__ for x in leaves if not isinstance(x, torch.Tensor)]
    if bad:
        raise ModelError(f"the model returns non-tensor values ({', '.join(sorted(set(bad)))}); return tensors (or tuples/lists/dicts of them)")
    if not leaves:
        raise ModelError("the model returns no tensors")
    return leaves


def run_torch(torch: Any, model: Any, specs: Sequence[InputSpec], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    args = [torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in specs]
    try:
        with torch.no_grad():
            out = model(*args)
    except Exception as exc:
        shapes = ", ".join(f"{s.name}{list(feeds[s.name].shape)} {s.dtype}" for s in specs)
        raise ModelError(f"the model fails in torch on inputs {shapes}: {type(exc).__name__}: {describe_exception(exc)}; check --input") from exc
    return [t.detach().cpu().numpy() for t in flatten_outputs(torch, out)]


def default_output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _dynamo(torch: Any, model: Any, args: tuple[Any, ...], specs: Sequence[InputSpec], names: list[str], opset: int | None, dyn: DynamicAxes) -> onnx.ModelProto:
    from converter.torch_export.torch_env import require_onnxscript

    require_onnxscript()
    dynamic_shapes = None
    if dyn.symbols:
        dims = {s: torch.export.Dim(s) for s in dyn.symbols}
        dynamic_shapes = tuple({a: dims[sym] for a, sym in dyn.axes[s.name].items()} if s.name in dyn.axes else None for s in specs)
    program = torch.onnx.export(
        model, args, dynamo=True, opset_version=opset, input_names=[s.name for s in specs], output_names=names,
        dynamic_shapes=dynamic_shapes, verbose=False, optimize=True,
    )
    return program.model_proto


def following_axes(torch: Any, model: Any, specs: Sequence[InputSpec], dyn: DynamicAxes, traced: dict[str, int], seed: int) -> list[dict[int, str]]:
    """Per output, {axis: symbol} for the axes whose size is the symbol's: the model runs at the traced
    sizes and, for each symbol, with that symbol one larger; an axis follows it if it moves in step."""
    base = run_torch(torch, model, specs, sample_feeds(specs, seed, dyn.shapes(specs, traced)))
    found: list[dict[int, str]] = [{} for _ in base]
    for symbol in dyn.symbols:
        size = traced[symbol]
        moved = run_torch(torch, model, specs, sample_feeds(specs, seed, dyn.shapes(specs, {**traced, symbol: size + 1})))
        for i, (x, y) in enumerate(zip(base, moved)):
            for axis in range(min(x.ndim, y.ndim)):
                if axis not in found[i] and x.shape[axis] == size and y.shape[axis] == size + 1:
                    found[i][axis] = symbol
    return found


def _torchscript(
    torch: Any, model: Any, args: tuple[Any, ...], specs: Sequence[InputSpec], names: list[str], opset: int | None, dyn: DynamicAxes,
    traced: dict[str, int], seed: int,
) -> onnx.ModelProto:
    dynamic_axes = None
    if dyn.symbols:
        follows = following_axes(torch, model, specs, dyn, traced, seed)
        dynamic_axes = {s.name: dict(dyn.axes[s.name]) for s in specs if s.name in dyn.axes}
        dynamic_axes |= {n: follows[i] for i, n in enumerate(names) if follows[i]}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*", category=DeprecationWarning)
        torch.onnx.export(
            model, args, buf, dynamo=False, opset_version=opset, input_names=[s.name for s in specs], output_names=names,
            dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def export(
    torch: Any, model: Any, specs: Sequence[InputSpec], *, exporter: str, opset: int | None, dyn: DynamicAxes, output_names: Sequence[str] | None, seed: int,
) -> Exported:
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter '{exporter}' (known: {', '.join(EXPORTERS)})")
    traced = trace_sizes(given_sizes(dyn, specs))
    feeds = sample_feeds(specs, seed, dyn.shapes(specs, traced))
    count = len(run_torch(torch, model, specs, feeds))
    names = list(output_names) if output_names else default_output_names(count)
    if len(names) != count:
        raise UsageError(f"--output-names gives {len(names)} name(s), the model returns {count} output(s)")
    args = tuple(torch.from_numpy(feeds[s.name]) for s in specs)
    started = time.perf_counter()
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        try:
            if exporter == "dynamo":
                proto = _dynamo(torch, model, args, specs, names, opset, dyn)
            else:
                proto = _torchscript(torch, model, args, specs, names, opset, dyn, traced, seed)
        except ConverterError:
            raise
        except Exception as exc:
            other = "torchscript" if exporter == "dynamo" else "dynamo"
            raise ModelError(f"the {exporter} exporter failed: {type(exc).__name__}: {describe_exception(exc)} (--debug shows the traceback; --exporter {other} may work)") from exc
    seen = list(dict.fromkeys(f"{w.category.__name__}: {shorten(str(w.message))}" for w in caught))
    if printed.getvalue().strip():
        log.debug("torch printed: %s", printed.getvalue().strip()[:2000])
    renamed = name_dims(proto, dyn)
    return Exported(proto, exporter, names, traced, time.perf_counter() - started, seen, renamed)
