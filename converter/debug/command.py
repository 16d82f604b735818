"""``convert debug accuracy FLOAT.onnx LOWERED.onnx --data FEEDS.npz``: where a Q/DQ or fp16 model loses accuracy.

Prints, worst first, every quantized tensor's error against the float model (cosine,
relative L2, max abs), the nodes that read it, and the pipeline text that would keep
the worst ones in float. Exit 0: it is a report.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

from converter import reporting
from converter.command_api import Command, add_common, positive_int
from converter.debug.accuracy import compare_layers
from converter.debug.sharded import compare_layers_sharded
from converter.errors import EXIT_OK, UsageError
from converter.feeds import Feeds, check_feeds, load_npz, seeded_feeds
from converter.graph_info import graph_inputs
from converter.model_io import load_model
from converter.plugin_manager import Plugins
from converter.text_table import table_lines

log = logging.getLogger("converter.debug")

DESCRIPTION = """Compare a float model with its lowered version (Q/DQ int8 or fp16) layer by layer.

Q/DQ models: each DequantizeLinear output is compared with the float tensor it replaces
(the input of the QuantizeLinear before it; for int8 weights, the float weight the reading
node had). fp16 models: tensors with the same name in both. Errors are over all samples:
cosine, relative L2 (||lowered - float|| / ||float||, accumulated up to that tensor), max abs;
for Q/DQ also 'own', the tensor's own quantization error (DQ(Q(x)) vs x inside the
quantized model), which is what a bad scale shows in and what ranks by default.
Memory stays bounded: at most --chunk-size tensors are marked as outputs per session.
--ray runs shards of the batches as Ray tasks; the sums are exact, so the report is the same."""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    dsub = p.add_subparsers(dest="debug_command", required=True, parser_class=type(p))
    acc = dsub.add_parser("accuracy", help="compare a float and a quantized (Q/DQ or fp16) model layer by layer",
                          description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    acc.add_argument("float_model", type=Path, help="the float32 model")
    acc.add_argument("quant_model", type=Path, help="the same model after qdq or fp16")
    src = acc.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, metavar="FEEDS.npz", help="inputs keyed by input name, first axis = samples")
    src.add_argument("--random", type=positive_int, metavar="N", help="N seeded random samples (a warning: real data shows real errors)")
    acc.add_argument("--batch-size", type=positive_int, help="samples per run (default: the model's static batch, else 8)")
    acc.add_argument("--top", type=positive_int, default=10, help="tensors to list (default 10)")
    acc.add_argument("--chunk-size", type=positive_int, default=64, help="most tensors marked as outputs per session (default 64)")
    acc.add_argument("--threshold", type=float, default=0.05, help="a tensor's readers are suggested for exclusion when its error exceeds this and 3x the median error (default 0.05)")
    acc.add_argument("--sort", choices=["own", "total"], help="rank by own quantization error (Q/DQ default) or by accumulated error (fp16 default)")
    acc.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    acc.add_argument("--ray", metavar="auto|ADDRESS", help="compare in shards of batches on a Ray cluster (the same report): auto = the local cluster, "
                     "started when none runs; ADDRESS = a running cluster (HOST:6379 or ray://HOST:10001); needs pip install 'converter[ray]'")
    reporting.add_report_flag(acc)
    add_common(acc)


def _static_batch(specs) -> int | None:
    dims = {s.shape[0] for s in specs if s.shape}
    if len(dims) == 1 and isinstance(next(iter(dims)), int) and next(iter(dims)) > 0:
        return int(next(iter(dims)))
    return None


def _batch_size(specs, requested: int | None, samples: int) -> int:
    """The model's static batch, else --batch-size, else up to 8."""
    static = _static_batch(specs)
    if static is not None and requested not in (None, static):
        raise UsageError(f"the model's batch is static ({static}); use --batch-size {static} or make it dynamic (-p dynamic_batch)")
    return static or requested or max(1, min(8, samples))


def _samples(data: Feeds) -> int:
    counts = {k: (v.shape[0] if v.ndim else 0) for k, v in data.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise UsageError(f"--data: every array needs the same number of samples on its first axis, got {counts}")
    return next(iter(counts.values()))


def _npz_batches(data: Feeds, specs, batch: int) -> tuple[Callable[[], Iterator[Feeds]], int]:
    n = _samples(data)
    usable = n - n % batch
    if usable == 0:
        raise UsageError(f"--data holds {n} samples, fewer than one batch of {batch}")
    if usable < n:
        log.warning("--data: %d samples left over after batches of %d are not used", n - usable, batch)
    check_feeds({k: v[:batch] for k, v in data.items()}, specs, where="--data")

    def batches() -> Iterator[Feeds]:
        for i in range(0, usable, batch):
            yield {k: v[i : i + batch] for k, v in data.items()}

    return batches, usable


def _random_batches(specs, samples: int, batch: int, seed: int) -> tuple[Callable[[], Iterator[Feeds]], int]:
    log.warning("--random: seeded random inputs; errors on real data can differ a lot (use --data)")
    runs = math.ceil(samples / batch)

    def batches() -> Iterator[Feeds]:
        for i in range(runs):
            yield seeded_feeds(specs, seed + i, batch=batch)

    return batches, runs * batch


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def render(report, top: int, threshold: float) -> str:
    head = ["#", "tensor", "kind", "cosine", "rel_l2", "max_abs", "own_rel_l2", "read by"]
    rows = []
    for i, e in enumerate(report.ranked()[:top], 1):
        readers = ", ".join(e.consumers[:3]) + (f" (+{len(e.consumers) - 3})" if len(e.consumers) > 3 else "")
        rows.append([str(i), e.tensor, e.kind, f"{e.cosine:.6f}", _fmt(e.rel_l2), _fmt(e.max_abs), _fmt(e.own_rel_l2), e.problem or readers])
    lines = [(f"{report.mode} model: {len(report.errors)} tensors compared on {report.samples} samples, ranked by "
             f"{'own quantization' if report.sort == 'own' else 'accumulated'} error (relative L2)")]
    lines += table_lines(head, rows)
    if report.unmapped:
        lines.append(f"{len(report.unmapped)} DequantizeLinear outputs have no float counterpart: {', '.join(report.unmapped[:5])}")
    exclude = report.suggest_exclude(top, threshold)
    option = "exclude" if report.mode == "qdq" else "node_block_list"
    rule = f"the larger of {threshold:g} and 3x the median of their kind (activations: {report.cutoff(threshold):.3g})"
    if exclude:
        lines.append(f"suggested: -p '{report.mode}{{{option}=[{','.join(exclude)}]}}'  (readers of listed tensors whose error exceeds {rule})")
    else:
        lines.append(f"no listed tensor's error exceeds {rule}: nothing to exclude")
    return "\n".join(lines)


def _same_inputs(a, b) -> None:
    def text(specs) -> str:
        return ", ".join(f"{s.name}[{','.join(str(d) for d in s.shape)}]" for s in specs)

    def static(d) -> bool:
        return isinstance(d, int) and d > 0

    by_name = {s.name: s for s in b}
    same = set(by_name) == {s.name for s in a} and all(
        len(s.shape) == len(by_name[s.name].shape) and all(x == y or not (static(x) and static(y)) for x, y in zip(s.shape, by_name[s.name].shape))
        for s in a
    )
    if not same:
        raise UsageError(f"the models take different inputs: {text(a)} vs {text(b)}; compare a model with its own lowered version")


def cmd_accuracy(args: argparse.Namespace) -> int:
    reporting.check_report_path(args.report, [args.float_model, args.quant_model])
    float_model, quant_model = load_model(args.float_model).proto, load_model(args.quant_model).proto
    specs = graph_inputs(float_model)
    _same_inputs(specs, graph_inputs(quant_model))
    arrays = load_npz(args.data) if args.data is not None else None
    if arrays is not None:
        batch = _batch_size(specs, args.batch_size, _samples(arrays))
        batches, samples = _npz_batches(arrays, specs, batch)
    else:
        batch = _batch_size(specs, args.batch_size, args.random)
        batches, samples = _random_batches(specs, args.random, batch, args.seed)
    if args.ray:
        report = compare_layers_sharded(float_model, quant_model, data=arrays, specs=specs, seed=args.seed, batch=batch, runs=samples // batch,
                                        chunk_size=args.chunk_size, sort=args.sort, address=args.ray, log=log)
    else:
        report = compare_layers(float_model, quant_model, batches, samples=samples, chunk_size=args.chunk_size, sort=args.sort)
    if not report.errors:
        raise UsageError(f"{args.quant_model} has no DequantizeLinear and no float tensor named as in {args.float_model}: nothing to compare")
    data = {"float_model": str(args.float_model), "quant_model": str(args.quant_model), **report.to_json(args.top, args.threshold)}
    if args.json:
        reporting.emit("debug accuracy", data)
    else:
        print(render(report, args.top, args.threshold))
    if args.report:
        reporting.write_page(args.report, reporting.document("debug accuracy", data), [args.float_model, args.quant_model])
    return EXIT_OK


class DebugCommand(Command):
    name = "debug"
    help = "debugging tools (accuracy)"
    description = "Debugging tools."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _add_arguments(parser)

    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        return cmd_accuracy(args)
