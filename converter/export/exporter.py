"""torch.onnx.export with either exporter, a dynamic batch by default.

- ``dynamo``: ``torch.export`` + onnxscript (``dynamo=True``); the batch is ``Dim("batch")`` on dim 0
  of every input, and the exporter carries it through the graph symbolically.
- ``torchscript``: the legacy tracing exporter (``dynamo=False``) with ``dynamic_axes``; the
  outputs whose dim 0 follows the batch are found by running the model at two batch sizes.

A dynamic export traces at batch >= 2: torch.export specializes sizes 0 and 1, so a sample
batch of 1 would pin the batch. Verification then runs at other batch sizes (1 and 4).
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
from converter.export.inputs import InputSpec, sample_feeds

EXPORTERS = ("dynamo", "torchscript")
log = logging.getLogger("converter.export")


@dataclass
class Exported:
    proto: onnx.ModelProto
    exporter: str
    output_names: list[str]
    trace_batch: int | None
    seconds: float
    warnings: list[str] = field(default_factory=list)


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


def trace_batch(specs: Sequence[InputSpec], dynamic: bool) -> int | None:
    return max(2, specs[0].shape[0]) if dynamic else None


def default_output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _dynamo(torch: Any, model: Any, args: tuple[Any, ...], specs: Sequence[InputSpec], names: list[str], opset: int | None, dynamic: bool) -> onnx.ModelProto:
    from converter.export.torch_env import require_onnxscript

    require_onnxscript()
    dynamic_shapes = None
    if dynamic:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in specs)
    program = torch.onnx.export(
        model, args, dynamo=True, opset_version=opset, input_names=[s.name for s in specs], output_names=names,
        dynamic_shapes=dynamic_shapes, verbose=False, optimize=True,
    )
    return program.model_proto


def _batch_outputs(torch: Any, model: Any, specs: Sequence[InputSpec], batch: int, seed: int) -> set[int]:
    """Indices of outputs whose dim 0 changes with the batch."""
    a = run_torch(torch, model, specs, sample_feeds(specs, seed, batch))
    b = run_torch(torch, model, specs, sample_feeds(specs, seed, batch + 1))
    return {i for i, (x, y) in enumerate(zip(a, b)) if x.ndim and y.ndim and x.shape[0] == batch and y.shape[0] == batch + 1}


def _torchscript(torch: Any, model: Any, args: tuple[Any, ...], specs: Sequence[InputSpec], names: list[str], opset: int | None, dynamic: bool, seed: int) -> onnx.ModelProto:
    dynamic_axes = None
    if dynamic:
        follows = _batch_outputs(torch, model, specs, int(args[0].shape[0]), seed)
        dynamic_axes = {s.name: {0: "batch"} for s in specs} | {n: {0: "batch"} for i, n in enumerate(names) if i in follows}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*", category=DeprecationWarning)
        torch.onnx.export(
            model, args, buf, dynamo=False, opset_version=opset, input_names=[s.name for s in specs], output_names=names,
            dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def export(torch: Any, model: Any, specs: Sequence[InputSpec], *, exporter: str, opset: int | None, dynamic: bool, output_names: Sequence[str] | None, seed: int) -> Exported:
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter '{exporter}' (known: {', '.join(EXPORTERS)})")
    batch = trace_batch(specs, dynamic)
    feeds = sample_feeds(specs, seed, batch)
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
                proto = _dynamo(torch, model, args, specs, names, opset, dynamic)
            else:
                proto = _torchscript(torch, model, args, specs, names, opset, dynamic, seed)
        except ConverterError:
            raise
        except Exception as exc:
            other = "torchscript" if exporter == "dynamo" else "dynamo"
            raise ModelError(f"the {exporter} exporter failed: {type(exc).__name__}: {describe_exception(exc)} (--debug shows the traceback; --exporter {other} may work)") from exc
    seen = list(dict.fromkeys(f"{w.category.__name__}: {shorten(str(w.message))}" for w in caught))
    if printed.getvalue().strip():
        log.debug("torch printed: %s", printed.getvalue().strip()[:2000])
    return Exported(proto, exporter, names, batch, time.perf_counter() - started, seen)
