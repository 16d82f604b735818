"""Run the model on calibration batches and stream per-tensor statistics.

The model is copied with the tensors to calibrate as its only outputs and run
on ONNX Runtime batch by batch; each batch's values update the tensors'
:class:`~converter.calibration.stats.TensorStats` and are dropped. When the
tensors of one batch would take more than ``budget_mib``, they are split into
chunks and the data is streamed once per chunk, so memory stays bounded
whatever the model. Graph inputs are taken from the feeds directly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from converter import progress
from converter.calibration.batching import rebatch, samples_in
from converter.calibration.sources import CalibSource, Feeds
from converter.calibration.stats import DEFAULT_BINS, NaNFound, TensorStats
from converter.errors import PassRefused, UsageError, describe_exception
from converter.graph_edit import replace_repeated
from converter.graph_info import iter_graphs
from converter.ort_session import make_session, run_session, session_options

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
_UNKNOWN_DIM = 64


@dataclass
class CollectResult:
    stats: dict[str, TensorStats]
    samples: int = 0
    batches: int = 0
    chunks: int = 0
    seconds: float = 0.0
    chunk_sizes: list[int] = field(default_factory=list)


def _skeleton(model: onnx.ModelProto, keep_elements: int = 4096) -> onnx.ModelProto:
    """The model without its large initializers (declared as inputs instead): what shape inference needs."""
    out = onnx.ModelProto()
    out.ir_version, out.producer_name = model.ir_version, model.producer_name
    out.opset_import.extend(model.opset_import)
    g = out.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    declared = {vi.name for vi in model.graph.input}
    for t in model.graph.initializer:
        if math.prod(t.dims) <= keep_elements and t.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Type and shape of every tensor ONNX shape inference can tell, subgraphs included (weights are left out: any model size)."""
    inferred = onnx.shape_inference.infer_shapes(_skeleton(model), check_type=False, strict_mode=False, data_prop=True)
    out: dict[str, onnx.ValueInfoProto] = {}
    for g in iter_graphs(inferred.graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            out.setdefault(vi.name, vi)
    return out


def _bytes_per_sample(vi: onnx.ValueInfoProto | None) -> int:
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return 4 * _UNKNOWN_DIM**3
    dims = [d.dim_value if d.HasField("dim_value") else (1 if i == 0 else _UNKNOWN_DIM) for i, d in enumerate(vi.type.tensor_type.shape.dim)]
    return 4 * max(1, math.prod(dims))


def plan_chunks(tensors: Sequence[str], infos: dict[str, onnx.ValueInfoProto], batch: int, budget_bytes: int) -> list[list[str]]:
    """Split ``tensors`` so one batch of each chunk's outputs stays under ``budget_bytes`` (one tensor at least)."""
    chunks: list[list[str]] = [[]]
    used = 0
    for name in tensors:
        size = _bytes_per_sample(infos.get(name)) * batch
        if chunks[-1] and used + size > budget_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += size
    return [c for c in chunks if c]


def calibration_model(model: onnx.ModelProto, outputs: Sequence[str], infos: dict[str, onnx.ValueInfoProto]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are exactly ``outputs`` (ONNX Runtime then computes only what they need)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    for name in outputs:
        elem = infos[name].type.tensor_type.elem_type if name in infos else onnx.TensorProto.FLOAT
        out.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return out


_MIN, _MAX = "\x00min", "\x00max"
_BIG, _NEG_BIG = "\x00float_max", "\x00float_lowest"
"""Suffixes of the reduction outputs (a NUL byte: no ONNX model names a tensor that way)."""


def with_extremes(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """``model`` (changed in place) with ReduceMin/ReduceMax of each of ``tensors`` over all axes as extra outputs: two scalars each."""
    wanted = set(tensors)
    if not wanted:
        return model
    big = np.finfo(np.float32).max
    model.graph.initializer.extend([numpy_helper.from_array(np.array(big, np.float32), _BIG), numpy_helper.from_array(np.array(-big, np.float32), _NEG_BIG)])
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:  # each reduction right after its producer, so the tensor can be freed early
        nodes.append(node)
        for name in node.output:
            if name in wanted:  # ±inf (masks) left out: replaced by the other end's extreme before reducing
                nodes.extend([
                    helper.make_node("IsInf", [name], [name + "\x00inf"]),
                    helper.make_node("Where", [name + "\x00inf", _BIG, name], [name + "\x00lo"]),
                    helper.make_node("Where", [name + "\x00inf", _NEG_BIG, name], [name + "\x00hi"]),
                    helper.make_node("ReduceMin", [name + "\x00lo"], [name + _MIN], keepdims=0),
                    helper.make_node("ReduceMax", [name + "\x00hi"], [name + _MAX], keepdims=0),
                ])
    replace_repeated(model.graph.node, nodes)
    for name in dict.fromkeys(tensors):
        for suffix in (_MIN, _MAX):
            model.graph.output.append(helper.make_tensor_value_info(name + suffix, onnx.TensorProto.FLOAT, []))
    return model


def check_feeds(feeds: Feeds, offset: int, where: str) -> None:
    """NaN in the user's data: exit 2 naming the input and the sample (±inf is a value: additive attention masks hold -inf)."""
    for name, value in feeds.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            bad = np.isnan(arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, -1))
            sample = int(np.argmax(bad.any(axis=1)))
            raise UsageError(f"--calib-data {where}: input '{name}' holds NaN in sample {offset + sample}; calibration data must not hold NaN")


class Collector:
    """Streams statistics of ``tensors`` of ``model`` over a calibration source."""

    def __init__(
        self,
        model: onnx.ModelProto,
        tensors: Sequence[str],
        *,
        histogram: bool = True,
        extremes_only: Sequence[str] = (),
        batch_size: int = 8,
        exact_batch: bool = False,
        budget_mib: float = 256.0,
        bins: int = DEFAULT_BINS,
        log: logging.Logger | None = None,
        threads: int = 0,
    ) -> None:
        """``threads``: ONNX Runtime intra-op threads (0: its default, every core; shards on a cluster use 1 each)."""
        self.model = model
        self.threads = threads
        self.batch_size = batch_size
        self.exact_batch = exact_batch
        self.log = log or logging.getLogger("converter.calibration")
        self.infos = value_infos(model)
        inputs = {vi.name for vi in model.graph.input} - {t.name for t in model.graph.initializer}
        plain = set(extremes_only)  # tensors whose min and max are enough: reduced in the graph, no histogram
        self.from_feeds = [t for t in tensors if t in inputs]
        self.from_model = [t for t in tensors if t not in inputs and t not in plain]
        self.reduced = [t for t in tensors if t not in inputs and t in plain]
        self.chunks = plan_chunks(self.from_model, self.infos, batch_size, int(budget_mib * 2**20)) or [[]]
        self.stats = {t: TensorStats(t, bins=bins, histogram=histogram and t not in plain, tolerate_nan=t in plain) for t in tensors}

    def run(self, source: CalibSource, limit: int | None = None) -> CollectResult:
        start = time.perf_counter()
        result = CollectResult(self.stats, chunks=len(self.chunks), chunk_sizes=[len(c) for c in self.chunks])
        total = source.sample_count()
        total = min(total, limit) if total is not None and limit is not None else (total if total is not None else limit)
        for index, chunk in enumerate(self.chunks):
            try:
                reduced = self.reduced if index == 0 else []
                so = session_options(threads=self.threads)
                so.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # runs each reduction early (the default order runs them last: 5x the memory)
                session = make_session(with_extremes(calibration_model(self.model, chunk, self.infos), reduced), options=so) if chunk or reduced else None
            except Exception as exc:  # the model (not the data): ONNX Runtime cannot build it
                raise PassRefused(f"calibration: ONNX Runtime cannot run the model: {describe_exception(exc)}") from exc
            label = "calibrate" + (f" (tensor chunk {index + 1}/{len(self.chunks)})" if len(self.chunks) > 1 else "")
            with progress.step(label, total=total, unit="samples") as task:
                samples, batches = self._chunk(source, limit, session, chunk, index, total, task)
            del session
            result.samples, result.batches = samples, batches
        if total is None or result.samples != total:
            self.log.info("calibration: %d samples in %d batches", result.samples, result.batches)
        result.seconds = time.perf_counter() - start
        return result

    def _chunk(self, source: CalibSource, limit: int | None, session: object, chunk: list[str], index: int, total: int | None, task: progress.Task) -> tuple[int, int]:
        """One pass over the data for one chunk of tensors; returns (samples, batches)."""
        samples = batches = 0
        next_report = 0.0
        for feeds in rebatch(source, self.batch_size, limit, self.exact_batch):
            count = samples_in(feeds, source)
            if index == 0:
                check_feeds(feeds, samples, source.description)
            try:
                self._update(session, chunk, feeds, first_chunk=index == 0)
            except NaNFound as exc:
                raise PassRefused(
                    f"calibration: the model's tensor '{exc.tensor}' holds NaN on samples {samples}..{samples + count - 1} of {source.description} "
                    "(the inputs are finite: the model computes NaN there)"
                ) from exc
            samples += count
            batches += 1
            task.advance(count)
            if total and samples / total >= next_report:
                self.log.info("calibration: %d/%d samples (tensor chunk %d/%d)", samples, total, index + 1, len(self.chunks))
                next_report = samples / total + 0.1
        return samples, batches

    def _update(self, session: object, chunk: list[str], feeds: Feeds, first_chunk: bool) -> None:
        if first_chunk:
            for name in self.from_feeds:
                self.stats[name].update(feeds[name])
        if session is not None:
            try:
                outputs = run_session(session, feeds)  # type: ignore[arg-type]
            except Exception as exc:
                raise PassRefused(f"calibration: ONNX Runtime failed on the calibration data: {describe_exception(exc)}") from exc
            for name, value in outputs.items():
                if name in self.stats:
                    self.stats[name].update(np.asarray(value))
            for name in self.reduced if first_chunk else []:
                lo, hi = float(outputs[name + _MIN]), float(outputs[name + _MAX])
                if lo <= hi:  # else every value was ±inf (or NaN: left out for these observed-only tensors)
                    self.stats[name].update(np.array([lo, hi], dtype=np.float64))
