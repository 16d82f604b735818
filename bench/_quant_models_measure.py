"""Measuring on ONNX Runtime for bench/bench_quant_models.py: sessions (as run by default, or with exact Q/DQ
arithmetic), outputs over the evaluation samples, output cosine, what ORT's optimizer fuses, interleaved latency."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from bench_quant import SPINNING_OFF, Run

Feeds = dict[str, np.ndarray]
EXACT_QDQ = "session.disable_quant_qdq"

INT8_LAYERS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "ConvInteger",
               "QAttention", "QLinearConvTranspose"}
FLOAT_LAYERS = {"Conv", "FusedConv", "NchwcConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "Attention", "MultiHeadAttention"}


@dataclass
class Contender:
    name: str
    path: Path
    kind: str  # fp32 | ours | ours-onnx | ort
    config: str = ""
    timed: bool = True
    calib: Run | None = None
    error: str = ""
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    """metric -> (as run by default: ORT's int8 kernels fused, with session.disable_quant_qdq=1: exact Q/DQ)."""
    ms: dict[int, float] = field(default_factory=dict)
    fused: str = "-"


def session(path: Path, threads: int, *, exact: bool = False, optimized: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry(SPINNING_OFF, "0")
    if exact:
        so.add_session_config_entry(EXACT_QDQ, "1")
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def take(feeds: Feeds, start: int, stop: int) -> Feeds:
    return {k: np.ascontiguousarray(v[start:stop]) for k, v in feeds.items()}


def outputs(sess: ort.InferenceSession, feeds: Feeds, batch: int) -> dict[str, np.ndarray]:
    """Every output over all samples (batch at dim 0), concatenated, float64 for float outputs."""
    n = len(next(iter(feeds.values())))
    names = [o.name for o in sess.get_outputs()]
    runs = [sess.run(names, take(feeds, i, i + batch)) for i in range(0, n, batch)]
    out = {}
    for j, name in enumerate(names):
        y = np.concatenate([r[j] for r in runs])
        out[name] = y.astype(np.float64) if y.dtype.kind == "f" else y
    return out


def cosine(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """Minimum over float outputs of the cosine of the output flattened over all evaluation samples."""
    worst = float("inf")
    for name, r in ref.items():
        if r.dtype.kind != "f":
            continue
        g = got[name]
        if not np.all(np.isfinite(g)):
            return float("nan")
        denom = np.linalg.norm(r) * np.linalg.norm(g)
        worst = min(worst, float(r.ravel() @ g.ravel() / denom) if denom > 0 else float(np.array_equal(r, g)))
    return worst


def fusion_summary(path: Path, threads: int) -> str:
    """ORT's optimized graph (default level): int8 layer kernels / all Conv/Gemm/MatMul-like layers, other QLinear*
    ops (com.microsoft element-wise/pooling kernels), DequantizeLinear left."""
    optimized = path.with_suffix(".ortopt.onnx")
    session(path, threads, optimized=optimized)
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node)
    optimized.unlink(missing_ok=True)
    for extra in path.parent.glob(optimized.name + "*"):
        extra.unlink(missing_ok=True)
    q = sum(ops[o] for o in INT8_LAYERS)
    f = sum(ops[o] for o in FLOAT_LAYERS)
    other = sum(v for k, v in ops.items() if k.startswith("QLinear") and k not in INT8_LAYERS)
    return f"{q}/{q + f} (+{other} QLinear*, DQ {ops['DequantizeLinear']})"


def batch_works(path: Path, feeds: Feeds, batch: int, threads: int) -> str:
    """'' when the model runs at this batch, else the error (a model with a static batch 1)."""
    try:
        n = len(next(iter(feeds.values())))
        session(path, threads).run(None, {k: np.ascontiguousarray(np.resize(v, (batch, *v.shape[1:]))) for k, v in feeds.items()} if n < batch else take(feeds, 0, batch))
        return ""
    except Exception as e:  # noqa: BLE001 -- any failure means: not at this batch
        return str(e).splitlines()[0][:120]


def latency(contenders: list[Contender], feeds: Feeds, batches: tuple[int, ...], rounds: dict[int, int], threads: int, seed: int) -> None:
    """Medians of interleaved runs: 3 warm-up runs each, then every round runs each contender once, shuffled."""
    sessions = {}
    for c in contenders:
        try:
            sessions[c.name] = session(c.path, threads)
        except Exception as e:  # noqa: BLE001
            c.error = c.error or f"session: {str(e).splitlines()[0][:100]}"
    live = [c for c in contenders if c.name in sessions]
    rng = np.random.default_rng(seed)
    n = len(next(iter(feeds.values())))
    for b in batches:
        feed = take(feeds, 0, b) if n >= b else {k: np.ascontiguousarray(np.resize(v, (b, *v.shape[1:]))) for k, v in feeds.items()}
        ok = []
        for c in live:
            try:
                for _ in range(3):
                    sessions[c.name].run(None, feed)
                ok.append(c)
            except Exception as e:  # noqa: BLE001
                c.error = c.error or f"batch {b}: {str(e).splitlines()[0][:100]}"
        times: dict[str, list[float]] = {c.name: [] for c in ok}
        for _ in range(rounds[b]):
            for i in rng.permutation(len(ok)):
                c = ok[i]
                t0 = time.perf_counter()
                sessions[c.name].run(None, feed)
                times[c.name].append(time.perf_counter() - t0)
        for c in ok:
            c.ms[b] = 1e3 * float(np.median(times[c.name]))
