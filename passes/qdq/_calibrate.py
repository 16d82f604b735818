"""Calibration for the qdq pass: the cache, the data, the batch, the collector.

Order: a TensorRT cache given as ``cache`` is used as it is (it carries no
hashes); otherwise the data source is opened and checked against the model's
inputs (before any work), our JSON cache is reused when method, model hash and
data hash match, and else the model is run over the data. A model with a
static batch of 1 is calibrated in batches on a copy made dynamic by the
``dynamic_batch`` pass; where that pass refuses, one sample at a time. The same
analysis (run once, first) gives each input's sample axis (a recurrent state's
axis 1; none for scalars, fed unchanged to every run), which ``?axes=`` overrides. With ``--ray``
the statistics are collected in shards of the samples on a Ray cluster and merged exactly
(:mod:`~converter.calibration.ray_runner`): the same ranges as in one process.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converter.calibration import CALIB_DATA, CALIB_RANDOM, RAY
from converter.calibration.batching import rebatch, window
from converter.calibration.cache import (
    CalibrationCache,
    TensorRange,
    import_tensorrt,
    is_our_cache,
    is_tensorrt_file,
    json_text,
    load_json,
    model_hash,
    to_tensorrt_text,
    trt_version_tag,
)
from converter.calibration.calibrators import Calibrator
from converter.calibration.collector import CollectResult, value_infos
from converter.calibration.data import declared_axes, open_source
from converter.calibration.expose import expose, subgraph_tensors
from converter.calibration.ray_runner import collect_sharded
from converter.calibration.shards import CollectorSettings
from converter.calibration.sources import CalibSource, Feeds, sha256_text
from converter.errors import UsageError
from converter.graph_info import graph_inputs
from converter.pass_api import PassContext
from converter.passes.qdq._layout import Layout, calibration_layout, static_batch


@dataclass(frozen=True)
class CalibSettings:
    calibrator: Calibrator
    samples: int
    batch_size: int
    cache: str | None
    holdout: int = 0
    """Samples kept out of calibration for the accuracy budget (taken after the calibration samples)."""


@dataclass
class Calibrated:
    ranges: dict[str, TensorRange]
    facts: dict[str, Any] = field(default_factory=dict)
    heldout: list[Feeds] = field(default_factory=list)
    """Batches of held-out samples, each fitting the model as it is (its static batch, or ``batch_size``)."""
    replay: Callable[[], Iterator[Feeds]] | None = None
    """The calibration samples again, batched for the model as it is (bias correction runs on them)."""
    replay_batch: int = 1
    """Samples in each batch ``replay`` yields (the last one may hold fewer)."""


def _is_json_cache(path: str) -> bool:
    return Path(path).suffix.lower() == ".json"


def _default_trt_tag() -> str:
    try:
        return trt_version_tag(importlib.metadata.version("tensorrt"))
    except importlib.metadata.PackageNotFoundError:
        return trt_version_tag("10.0.0")


def _from_tensorrt_cache(path: str, tensors: list[str], ctx: PassContext, extra: list[str]) -> Calibrated:
    cache = import_tensorrt(path)
    missing = [t for t in tensors if t not in cache.tensors]
    if missing:
        raise UsageError(f"TensorRT calibration cache {path} lacks {len(missing)} tensors the model quantizes (e.g. {', '.join(missing[:3])}); delete it to recalibrate")
    ctx.log.warning("using TensorRT calibration cache %s as it is (%s): it carries no model or data hash", path, cache.header)
    return Calibrated({t: cache.tensors[t] for t in [*tensors, *extra] if t in cache.tensors}, {"cache": "imported tensorrt", "cache_header": cache.header})


def _observable(model: onnx.ModelProto, tensors: list[str], ctx: PassContext) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
    """The model to run and the outputs to read: tensors inside If/Loop/Scan bodies carried out to main-graph outputs."""
    inner = subgraph_tensors(model, tensors)
    if not inner:
        return model, tensors, {}
    exposed = expose(model, inner, value_infos(model))
    ctx.log.info("calibration: %d tensors inside If/Loop/Scan bodies carried out as outputs to be observed", len(inner))
    return exposed.model, [exposed.outputs.get(t, t) for t in tensors], {exposed.outputs[t]: t for t in inner}


CACHE = "calibration cache"


def _save(path: str, cache: CalibrationCache, ctx: PassContext) -> str:
    """Hand the cache to the run: it is written with the artifact, only when the run succeeds."""
    if _is_json_cache(path):
        ctx.side_files.add(path, json_text(cache).encode(), CACHE, is_our_cache)
        return "written with the artifact"
    text = to_tensorrt_text({k: r.amax for k, r in cache.tensors.items()}, _default_trt_tag(), "EntropyCalibration2")
    ctx.side_files.add(path, text.encode(), CACHE, is_our_cache)
    return "written with the artifact (tensorrt format)"


def calibrate(model: onnx.ModelProto, tensors: list[str], settings: CalibSettings, ctx: PassContext, extra: list[str] | None = None) -> Calibrated:
    """Ranges (amax, min, max) of ``tensors`` over the calibration data, or from the cache.

    ``extra`` tensors are observed in the same pass over the data (min and max only: their amax is the
    largest |x|, no histogram), and taken from a cache
    when it holds them (a cache without them is still reused: they are only recorded, not placed).
    """
    extra = [t for t in extra or [] if t not in set(tensors)]
    path = settings.cache
    if path:
        ctx.side_files.check(path, CACHE, is_our_cache)  # before any work: never the input, the artifact, a folder, or a foreign file
    if path and Path(path).is_file() and not _is_json_cache(path) and is_tensorrt_file(path):
        return _from_tensorrt_cache(path, tensors, ctx, extra)
    text, specs = ctx.inputs.get(CALIB_DATA), graph_inputs(model)
    run_model, run_tensors, back = _observable(model, [*tensors, *extra], ctx)
    layout = calibration_layout(run_model, settings.batch_size, run_tensors[: len(tensors)], declared_axes(text, specs), ctx)
    if layout.model is not run_model:  # a copy made dynamic: extra tensors it renamed are not recorded
        produced = {o for n in layout.model.graph.node for o in n.output} | {vi.name for vi in layout.model.graph.input}
        run_tensors = run_tensors[: len(tensors)] + [t for t in run_tensors[len(tensors) :] if t in produced]
    source = open_source(
        text, specs, allow_random=ctx.inputs.get(CALIB_RANDOM), samples=settings.samples, seed=ctx.seed, log=ctx.log,
        axes=layout.axes, run_specs=graph_inputs(layout.model),
    )
    label = settings.calibrator.label
    limit = _calibration_limit(source, settings)
    hashes = ("", "")
    if path:
        hashes = (model_hash(model), sha256_text(source.fingerprint(), f"samples={settings.samples}"))
        if Path(path).is_file() and _is_json_cache(path):
            cache = load_json(path)
            reason = cache.mismatch(label, *hashes) or (None if all(t in cache.tensors for t in tensors) else "it lacks tensors this placement quantizes")
            if reason is None:
                ctx.log.info("reusing calibration cache %s (%s, %d samples)", path, label, cache.samples)
                kept = {t: cache.tensors[t] for t in [*tensors, *extra] if t in cache.tensors}
                return Calibrated(kept, {"cache": "reused", "samples": cache.samples}, _heldout(model, source, layout, settings, limit),
                                  _replay(model, source, layout, settings, limit), _batch_for(model, layout, settings)[0])
            ctx.log.warning("calibration cache %s not reused: %s; recalibrating", path, reason)
    calib_model, feed_batch, exact = layout.model, layout.batch, layout.exact
    collected, ray_facts = _collect(calib_model, CollectorSettings(tuple(run_tensors), settings.calibrator.needs_histogram, tuple(run_tensors[len(tensors) :]),
                                                                   feed_batch, exact), source, limit, ctx)
    if collected.samples == 0:
        raise UsageError(f"--calib-data {source.description}: no samples reached the model (batch {feed_batch})")
    stats = {back.get(t, t): s for t, s in collected.stats.items()}
    ranges = {t: TensorRange(settings.calibrator.amax(s) if s.histogram else s.amax, s.min, s.max) for t, s in stats.items()}
    facts: dict[str, Any] = {
        "samples": collected.samples,
        "batches": collected.batches,
        "batch": feed_batch,
        "tensor_chunks": collected.chunks,
        "calibration_seconds": round(collected.seconds, 3),
        "data": source.description,
        **ray_facts,
    }
    if back:
        facts["subgraph_tensors"] = len(back)
    unseen = sorted(t for t, s in stats.items() if s.count == 0)
    if unseen:
        facts["not_reached"] = unseen  # inside a branch no calibration sample took
    infinite = {t: s.infinite for t, s in stats.items() if s.infinite}
    if infinite:
        facts["infinite_values_excluded"] = infinite  # -inf/+inf (attention masks) left out of the ranges
        ctx.log.info("calibration: ±inf left out of the range of %d tensor(s): %s", len(infinite), ", ".join(list(infinite)[:3]))
    if path:
        facts["cache"] = _save(path, CalibrationCache(label, ranges, hashes[0], hashes[1], collected.samples), ctx)
    return Calibrated(ranges, facts, _heldout(model, source, layout, settings, collected.samples), _replay(model, source, layout, settings, collected.samples),
                      _batch_for(model, layout, settings)[0])


def _collect(model: onnx.ModelProto, collect: CollectorSettings, source: CalibSource, limit: int, ctx: PassContext) -> tuple[CollectResult, dict[str, Any]]:
    """The statistics over the data: in this process, or with ``--ray`` in shards on a Ray cluster (the same numbers)."""
    address = ctx.inputs.get(RAY)
    if not address:
        return collect.collector(model, ctx.log).run(source, limit=limit), {}
    return collect_sharded(model, collect, source, limit=limit, address=address, log=ctx.log)


def _batch_for(model: onnx.ModelProto, layout: Layout, settings: CalibSettings) -> tuple[int, bool]:
    """The batch ``model`` itself takes (not the copy made dynamic for calibration): its static batch, exactly, or ``batch_size``."""
    static = {d for d in static_batch(model, layout.axes) if d is not None}
    return (max(static), True) if static else (settings.batch_size, False)


def _replay(model: onnx.ModelProto, source: CalibSource, layout: Layout, settings: CalibSettings, samples: int) -> Callable[[], Iterator[Feeds]]:
    size, exact = _batch_for(model, layout, settings)
    return lambda: rebatch(source, size, samples, exact)


def _calibration_limit(source: CalibSource, settings: CalibSettings) -> int:
    """Samples calibration reads: ``samples``, fewer when held-out samples must remain after them."""
    total = source.sample_count()
    if not settings.holdout or total is None:
        return settings.samples
    limit = min(settings.samples, total - settings.holdout)
    if limit < 1:
        raise UsageError(f"--calib-data {source.description}: {total} samples cannot give {settings.holdout} held-out samples for the accuracy budget "
                         "and still calibrate; give more samples or lower qdq{holdout=...}")
    return limit


def _heldout(model: onnx.ModelProto, source: CalibSource, layout: Layout, settings: CalibSettings, start: int) -> list[Feeds]:
    """The held-out samples (after the ``start`` calibration used), batched the way ``model`` itself takes them."""
    if not settings.holdout:
        return []
    size, exact = _batch_for(model, layout, settings)
    batches = window(source, size, start, settings.holdout, exact=exact)
    if not batches:
        raise UsageError(f"--calib-data {source.description}: no samples left after the {start} used for calibration to measure the accuracy budget on; "
                         "give more samples or lower qdq{samples=...}")
    return batches
