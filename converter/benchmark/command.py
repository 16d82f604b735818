"""``convert bench ARTIFACT``: latency and throughput of an artifact at one or more batch sizes.

Opens the artifact as ``golden check`` does (its manifest names the backend; a bare .onnx runs on
``ort``), warms it up, then times ``Runner.run`` calls (host wall time of one call, feeds already
built) per batch size. ``--compare OTHER`` loads a second artifact in the same process and times
both interleaved on identical feeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter import progress, reporting
from converter.artifacts import artifact_from_disk, read_manifest
from converter.backend_api import Artifact, Runner, TensorSpec
from converter.benchmark.measure import DEFAULT_DURATION_S, MIN_ITERATIONS, PERCENTILE_METHOD, BatchResult, TimingPlan, latency_stats, ratios, time_interleaved
from converter.benchmark.shapes import check_override_names, default_batch, feeds_at, merge_interfaces, parse_batches
from converter.command_api import Command
from converter.errors import EXIT_OK, BackendError, BackendUnavailable, UsageError
from converter.feeds import Feeds, load_npz, parse_shapes
from converter.plugin_manager import Plugins
from converter.text_table import printable, table_lines

log = logging.getLogger("converter.bench")

DESCRIPTION = f"""Measure an artifact's latency and throughput at one or more batch sizes.

For each batch size: --warmup untimed runs, then timed runs (time.perf_counter_ns around one
Runner.run call, feeds prepared beforehand) for --iterations runs or --duration seconds (default
{DEFAULT_DURATION_S:g} s per batch size, at least {MIN_ITERATIONS} runs). Reported in ms: min, mean, median,
p90, p99 (numpy percentiles, method '{PERCENTILE_METHOD}'), max, std (ddof=0); throughput = batch /
median latency (samples/s), queries/s = 1 / median latency.

The batch goes into the first dim of every input whose first dim is symbolic; other symbolic dims
come from --input-shapes. --compare OTHER times a second artifact in the same process, runs
interleaved on identical feeds; ratios are OTHER / ARTIFACT (latency > 1: OTHER is slower;
throughput > 1: OTHER is faster)."""


def _int_in(low: int, high: int | None = None) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"'{text}' must be >= {low}" + (f" and <= {high}" if high is not None else ""))
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"'{text}' must be a positive number of seconds")
    return value


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``convert bench`` (the common ``--json``/``--debug``/``-v`` come from the CLI)."""
    p.add_argument("artifact", type=Path, help="an emitted artifact (its manifest names the backend) or a bare .onnx")
    p.add_argument("--backend", help="backend that runs it (default: from its manifest; bare .onnx: ort)")
    p.add_argument("--batch", metavar="B,B,...", help="batch sizes, e.g. 1,8,32 (default: the model's fixed batch, else 1)")
    p.add_argument("--warmup", type=_int_in(0), default=10, metavar="N", help="untimed runs per batch size and artifact (default 10)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--iterations", type=_int_in(1), metavar="N", help="timed runs per batch size and artifact")
    stop.add_argument("--duration", type=_seconds, metavar="SECONDS",
                      help=f"timed seconds per batch size and artifact (default {DEFAULT_DURATION_S:g}, at least {MIN_ITERATIONS} runs)")
    p.add_argument("--threads", type=_int_in(0, 256), metavar="N",
                   help="intra-op threads of the runner, for backends that take a thread count (ort; 0: the runtime decides)")
    feeds = p.add_mutually_exclusive_group()
    feeds.add_argument("--input-shapes", metavar="SHAPES", help="symbolic dims besides the batch, e.g. ids:1x128 (the first dim is replaced by each --batch)")
    feeds.add_argument("--inputs", type=Path, metavar="FEEDS.npz", help="input arrays keyed by input name, cut or repeated along the first axis to each batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--compare", type=Path, metavar="OTHER",
                   help="another artifact with the same inputs, timed interleaved with ARTIFACT (its backend: from its manifest, else --backend, else ort)")
    reporting.add_report_flag(p)


@dataclass
class Opened:
    """An artifact opened for timing: its runner, the backend, and the intra-op thread count set (None: none can be set)."""

    path: Path
    artifact: Artifact
    backend: str
    runner: Runner
    threads: int | None
    note: str = ""
    """Why ``--threads`` was not applied, when it was not."""


def _option_names(options_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(options_cls)} if dataclasses.is_dataclass(options_cls) else set()


def open_artifact(path: Path, backend: str | None, threads: int | None, plugins: Plugins) -> Opened:
    """Open ``path`` as ``golden check`` does; ``threads`` goes to the backend's ``threads`` option when it has one.

    A manifest that records ``threads`` (the ``ort`` backend's runner reads it) is overridden in memory,
    never on disk. Missing or unreadable artifacts are UsageErrors (exit 2); an unavailable backend exits 3.
    """
    if path.exists() and not path.is_file():
        raise UsageError(f"artifact {path} is not a file")
    artifact = artifact_from_disk(path, backend)
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise UsageError(f"cannot read the artifact {path}: {exc.strerror or exc}") from exc
    cls = plugins.backends.get(artifact.backend).cls
    avail = cls.availability()
    if not avail:
        raise BackendUnavailable(f"backend '{cls.name}' is unavailable: {avail.reason}")
    takes_threads = "threads" in _option_names(cls.Options)
    note = ""
    if threads is not None and takes_threads:
        options = cls.Options(threads=threads)
        if "threads" in artifact.manifest:
            artifact = dataclasses.replace(artifact, manifest={**artifact.manifest, "threads": threads})
        applied: int | None = threads
    else:
        options = cls.Options()
        applied = int(artifact.manifest.get("threads", getattr(options, "threads", 0))) if takes_threads else None
        if threads is not None:
            note = f"backend '{cls.name}' takes no thread count: --threads {threads} is not applied to {path.name}"
            log.warning("%s", note)
    try:
        runner = cls(options).load(artifact)
    except BackendError as exc:
        raise UsageError(f"cannot open {path} with backend '{cls.name}': {exc}") from exc
    return Opened(path, artifact, cls.name, runner, applied, note)


def _protected(opened: list[Opened], inputs: Path | None) -> list[Path]:
    paths = [p for o in opened for p in (o.path, o.artifact.manifest_path, *o.artifact.files)]
    return paths + ([inputs] if inputs is not None else [])


def measure_batches(runners: list[Runner], specs: list[TensorSpec], batches: list[int], plan: TimingPlan, warmup: int, *,
                    seed: int, overrides: dict[str, tuple[int, ...]], npz: Feeds | None) -> list[list[BatchResult]]:
    """Time every runner at every batch size on identical feeds; one list of results per runner."""
    feeds_by_batch = {b: feeds_at(specs, b, seed=seed, overrides=overrides, npz=npz) for b in batches}  # every shape error before any timing
    results: list[list[BatchResult]] = [[] for _ in runners]
    for b in batches:
        feeds = feeds_by_batch[b]
        fns = [lambda r=r, f=feeds: r.run(f) for r in runners]
        with progress.step(f"bench batch {b}", total=plan.expected_rounds, unit="runs") as task:
            samples = time_interleaved(fns, plan, warmup, on_round=task.advance)
        for i, s in enumerate(samples):
            results[i].append(BatchResult(b, latency_stats(s)))
    return results


def _threads_text(o: Opened) -> str:
    if o.threads is None:
        return "threads: not settable"
    return "threads: runtime default" if o.threads == 0 else f"threads {o.threads}"


def _timing_text(plan: TimingPlan, warmup: int, per: str = "per batch size") -> str:
    timed = f"{plan.iterations} timed runs" if plan.iterations is not None else f"{plan.duration_s:g} s timed (at least {plan.min_iterations} runs)"
    return f"warm-up {warmup}, {timed} {per}"


def render_text(data: dict[str, Any], this: Opened, other: Opened | None, plan: TimingPlan, warmup: int) -> str:
    """The text report: header lines, then one table row per batch size (two when comparing)."""
    lines = [f"bench {printable(this.path)} (backend {this.backend}, {_threads_text(this)}); {_timing_text(plan, warmup)}"]
    head = ["batch", "median ms", "p90 ms", "p99 ms", "min ms", "mean ms", "throughput/s"]
    rows: list[list[str]] = []
    if other is None:
        rows = [[str(r["batch"]), *_latency_cells(r), f"{r['throughput_per_s']:.1f}"] for r in data["results"]]
    else:
        lines[0] = f"bench A = {printable(this.path)} (backend {this.backend}, {_threads_text(this)})"
        lines.append(f"      B = {printable(other.path)} (backend {other.backend}, {_threads_text(other)}); {_timing_text(plan, warmup, 'per batch size for each')}, A and B interleaved")
        lines.append("ratios are B / A: latency = B median / A median (> 1: B is slower), throughput = B / A (> 1: B is faster)")
        head = ["batch", "run", *head[1:], "latency B/A", "throughput B/A"]
        for a, b, q in zip(data["results"], data["compare"]["results"], data["compare"]["ratios"]):
            rows.append([str(a["batch"]), "A", *_latency_cells(a), f"{a['throughput_per_s']:.1f}", "", ""])
            rows.append(["", "B", *_latency_cells(b), f"{b['throughput_per_s']:.1f}", f"{q['latency']:.3f}", f"{q['throughput']:.3f}"])
    lines += table_lines(head, rows)
    lines.append(f"latency of one run in ms (p90/p99: numpy percentiles, method '{PERCENTILE_METHOD}'); throughput = batch / median latency, samples/s")
    return "\n".join(lines)


def _latency_cells(r: dict[str, Any]) -> list[str]:
    lat = r["latency_ms"]
    return [_ms(lat[k]) for k in ("median", "p90", "p99", "min", "mean")]


def _ms(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:.3f}" if value < 100 else f"{value:.1f}"


def bench_data(this: Opened, other: Opened | None, plan: TimingPlan, warmup: int, results: list[list[BatchResult]]) -> dict[str, Any]:
    """The command's fields of the ``bench`` report document (``reporting.document`` adds the envelope)."""
    data: dict[str, Any] = {
        "artifact": str(this.path), "backend": this.backend, "threads": this.threads, "warmup": warmup, "timing": plan.to_json(),
        "results": [r.to_json() for r in results[0]], "compare": None,
    }
    if other is not None:
        data["compare"] = {
            "artifact": str(other.path), "backend": other.backend, "results": [r.to_json() for r in results[1]],
            "ratios": [ratios(a, b) for a, b in zip(results[0], results[1])],
        }
    return data


@dataclass
class BenchRun:
    """A finished benchmark: the report document's fields (``data``) and what the text table needs."""

    data: dict[str, Any]
    this: Opened
    other: Opened | None
    plan: TimingPlan
    warmup: int

    def to_json(self) -> dict[str, Any]:
        return self.data

    def table(self) -> str:
        return render_text(self.data, self.this, self.other, self.plan, self.warmup)


def bench(
    artifact: Path, *, backend: str | None = None, batch: str | list[int] | None = None, warmup: int = 10, iterations: int | None = None,
    duration: float | None = None, threads: int | None = None, input_shapes: str | None = None, inputs: Path | None = None, seed: int = 0,
    compare: Path | None = None, report: Path | None = None, plugins: Plugins,
) -> BenchRun:
    """Check everything given, open the artifact(s), measure each batch size, and write ``report`` when asked."""
    artifact = Path(artifact)
    compare, inputs, report = (None if p is None else Path(p) for p in (compare, inputs, report))
    if iterations is not None and duration is not None:
        raise UsageError("give iterations or duration, not both")
    batches = parse_batches(batch if batch is None or isinstance(batch, str) else ",".join(str(b) for b in batch))
    plan = TimingPlan(iterations=iterations) if iterations is not None else TimingPlan(duration_s=duration or DEFAULT_DURATION_S)
    overrides = parse_shapes(input_shapes)
    reporting.check_report_path(report, [artifact, *([compare] if compare else []), *([inputs] if inputs else [])])
    npz = load_npz(inputs) if inputs is not None else None
    opened = [open_artifact(artifact, backend, threads, plugins)]
    specs = list(opened[0].runner.inputs)
    if compare is not None:
        other_backend = None if compare.is_file() and read_manifest(compare) is not None else backend  # its manifest names its own
        opened.append(open_artifact(compare, other_backend, threads, plugins))
        specs = merge_interfaces(specs, opened[1].runner.inputs, str(compare))
    protected = _protected(opened, inputs)
    reporting.check_report_path(report, protected)
    check_override_names(specs, overrides)
    if batches is None:
        batches = [default_batch(specs, overrides, npz)]
    results = measure_batches([o.runner for o in opened], specs, batches, plan, warmup, seed=seed, overrides=overrides, npz=npz)
    this, other = opened[0], opened[1] if len(opened) > 1 else None
    run = BenchRun(bench_data(this, other, plan, warmup, results), this, other, plan, warmup)
    if report is not None:
        reporting.write_page(report, reporting.document("bench", run.data), protected=protected)
    return run


def run_bench(args: argparse.Namespace, plugins: Plugins) -> int:
    """``convert bench``: :func:`bench` with the parsed flags, then the table (or the JSON document)."""
    run = bench(
        args.artifact, backend=args.backend, batch=args.batch, warmup=args.warmup, iterations=args.iterations, duration=args.duration,
        threads=args.threads, input_shapes=args.input_shapes, inputs=args.inputs, seed=args.seed, compare=args.compare, report=args.report,
        plugins=plugins,
    )
    if args.json:
        reporting.emit("bench", run.data)
    else:
        print(run.table())
        if args.report is not None:
            print(f"wrote {args.report}")
    return EXIT_OK


class BenchCommand(Command):
    """``convert bench ARTIFACT [--batch 1,8,32] [--compare OTHER] ...``: latency percentiles and throughput."""

    name = "bench"
    help = "measure an artifact's latency and throughput (median, p90, p99) per batch size"
    description = DESCRIPTION

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        add_bench_arguments(parser)

    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        return run_bench(args, plugins)
