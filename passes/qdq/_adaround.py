"""AdaRound (Nagel et al., 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization") for the qdq pass.

Round-to-nearest is the best rounding of each weight alone, not of the layer: what matters is the
layer's output. For each quantized Conv/Gemm/MatMul, AdaRound learns whether each int8 weight is
floor(w/s) or floor(w/s) + 1 (per-channel scale s unchanged, clamped to [-127, 127]) to minimize

    || f(W x + b) - f(W_q x' + b_q) ||^2    (summed over output channels, averaged over rows)

x is the layer's input in the float model; x' is x too by default (AIMET disables activation
quantizers while it rounds), or x through the layer's own activation Q/DQ (``quantized_input``: the
rounding then also tries to cancel the activation rounding; on EfficientNet-Lite0 that fit worse,
cosine to float 0.970 against 0.982). b / b_q are the float and the quantized model's bias and f the
Relu or Clip that alone reads the layer's output, if any (the paper's reconstruction with activation),
else the identity. Rounding of weight i: h(V_i) = clamp(sigmoid(V_i) (zeta - gamma) + gamma, 0, 1),
zeta = 1.1, gamma = -0.1, V starting where h(V) = w/s - floor(w/s); the loss adds
lambda * sum(1 - |2 h(V) - 1|^beta), lambda = 0.01, off for the first 20% of the iterations, then beta
annealed from 20 to 2 by a cosine; final rounding V >= 0 (AIMET's constants). Adam at lr 1e-2, not
AIMET's 1e-3: AIMET runs 10000 iterations, and in 500 at 1e-3 h(V) stays far from 0 and 1, so the hard
rounding lost to round-to-nearest on most layers. lambda is absolute, as in AIMET: a layer whose output
error is tiny next to 0.01 per weight ends close to round-to-nearest.

Rows: a Conv's rows are receptive-field patches at random output positions (``ROWS`` spread over the
``samples``), a Gemm/MatMul's rows its input rows. Memory is bounded: per layer rows x (inputs per row
+ output channels) <= ``ELEMENTS`` float32 (32 MiB) and rows <= ``ROWS``; layers whose rows fit in
``CHUNK_BYTES`` (256 MiB) together, ``CHUNK_LAYERS`` (6) at most, are collected from one streamed ORT
run of the float model (holding those layers' input tensors for one batch as outputs), then
optimized one at a time (plus a shuffled copy of the layer's training rows), each layer's rows freed
after it. The last fifth of a layer's rows (the last samples) is held out: the MSEs reported are
measured there, and a layer whose learned rounding is not better there keeps round-to-nearest. The
int8 initializers of ``quant_model`` are rewritten in place. The time budget is checked before each
collection run and each layer, and projected after a layer's first 20 iterations: it can be overrun by
one collection run.

Bias correction: it cancels each layer's output-mean shift, mostly the one round-to-nearest causes;
AdaRound's loss already includes the mean. EfficientNet-Lite0, percentile calibration, top-1
agreement / cosine to float on 96 held-out images: round-to-nearest 0.740 / 0.961, bias correction
0.844 / 0.980, AdaRound (500 iterations; two draws of rows) 0.865-0.896 / 0.982-0.985, AdaRound then
bias correction 0.833 / 0.977, AdaRound on the bias-corrected model 0.844 / 0.977. If both run, bias
correction runs after AdaRound.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter import progress
from converter.ort_session import make_session, run_session
from converter.passes.qdq._adaround_layers import Layer, find_layers, label, to_layout

Feeds = dict[str, np.ndarray]
ZETA, GAMMA = 1.1, -0.1
REG, BETA, WARM, LR = 0.01, (20.0, 2.0), 0.2, 1e-2
ROWS = 16384
"""Rows (Conv output positions, Gemm/MatMul input rows) kept per layer at most."""
ELEMENTS = 1 << 23
"""Floats kept per layer at most: rows x (inputs per row + output channels)."""
CHUNK_BYTES = 1 << 28
"""Bytes of rows held at once: layers whose rows fit together are collected in one run of the float model."""
CHUNK_LAYERS = 6
"""Layers collected in one run at most (the run holds each one's input tensor for a batch at once)."""
BATCH_ROWS = 512
"""Rows per optimization step."""
HOLDOUT = 0.2
SMALL_STEP = 1 << 22
"""Multiply-adds of one step below which a layer is optimized on one thread."""
ITERATIONS = 500
BUDGET = "time budget spent: keeps round-to-nearest"


@dataclass
class AdaroundReport:
    done: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """Layer -> (output MSE with round-to-nearest, with the learned rounding, fraction of weights flipped), on held-out rows."""
    kept_nearest: list[str] = field(default_factory=list)
    """Layers whose learned rounding was not better on the held-out rows (they keep round-to-nearest; in ``done`` with before == after)."""
    skipped: dict[str, str] = field(default_factory=dict)
    layer_seconds: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    rows: int = 0
    """Rows collected over all layers."""
    seconds: float = 0.0

    def facts(self) -> dict:
        ratios = {k: (a / b if b > 0 else 1.0) for k, (b, a, _) in self.done.items()}
        top = sorted(ratios.items(), key=lambda kv: kv[1])[:10]
        flipped = [f for _, _, f in self.done.values()]
        return {"layers": len(self.done), "iterations": self.iterations, "seconds": round(self.seconds, 2), "rows": self.rows,
                "kept_nearest": len(self.kept_nearest), "flipped": round(float(np.mean(flipped)), 5) if flipped else 0.0,
                "median_error_ratio": round(float(np.median(list(ratios.values()))), 4) if ratios else 1.0,
                "largest_gains": {k: {"mse_from": _g(self.done[k][0]), "mse_to": _g(self.done[k][1]), "flipped": round(self.done[k][2], 5)} for k, _ in top},
                **({"skipped": self.skipped} if self.skipped else {})}


def _g(x: float) -> float:
    return float(f"{x:.4g}")


def adaround(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, layers: list[str], batches: Callable[[], Iterator[Feeds]],
             samples: int, iterations: int = ITERATIONS, seconds: float | None = None, log: logging.Logger | None = None, *,
             quantized_input: bool = False) -> AdaroundReport:
    """Learn the rounding of ``layers``' int8 weights in ``quant_model`` (in place) from ``samples`` calibration samples.

    ``layers``: main-graph Conv/Gemm/MatMul nodes, by output tensor (as the pass's bias correction takes them) or node
    name; the report calls each the way ``layers`` does.

    ``seconds``: time budget for the whole (None: none); layers it does not reach, or whose optimization would end past it,
    keep round-to-nearest and are listed as skipped. ``quantized_input``: the quantized side of the loss reads the layer's
    input through its activation Q/DQ (default: the float input on both sides, like AIMET).
    """
    log = log or logging.getLogger(__name__)
    start = time.monotonic()
    deadline = math.inf if seconds is None else start + seconds
    report = AdaroundReport(iterations=iterations)
    try:
        import torch
    except ImportError:
        names = set(layers)
        for n in quant_model.graph.node:
            key = label(n, names)
            if key and n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                report.skipped[key] = "needs PyTorch (pip install 'converter[torch]')"
        return report
    targets = find_layers(float_model, quant_model, layers, report.skipped)
    for t in targets:
        t.rows = max(1, min(ROWS, ELEMENTS // (t.inputs + t.outputs)))
        if not quantized_input:
            t.x_scale = None
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    pending = list(targets)
    with progress.step("adaround", total=len(targets), unit="layers") as task:
        _learn_all(pending, float_model, batches, samples, rng, gen, iterations, deadline, report, task)
    report.seconds = time.monotonic() - start
    log.info("qdq: adaround: %d layers in %.1f s (%d kept round-to-nearest), %d skipped", len(report.done), report.seconds,
             len(report.kept_nearest), len(report.skipped))
    return report


def _learn_all(pending, float_model, batches, samples, rng, gen, iterations, deadline, report, task) -> None:
    """Collect rows and learn rounding chunk by chunk until done or out of time."""
    import torch
    while pending:
        if time.monotonic() >= deadline:
            report.skipped.update({t.label: BUDGET for t in pending})
            break
        chunk, size = [], 0
        while pending and (not chunk or (size + _bytes(pending[0]) <= CHUNK_BYTES and len(chunk) < CHUNK_LAYERS)):
            size += _bytes(pending[0])
            chunk.append(pending.pop(0))
        data = _collect(float_model, chunk, batches, max(samples, 1), rng)
        for t in chunk:
            x, y = data.pop(t.label)
            report.rows += len(x)
            task.advance()
            if time.monotonic() >= deadline:
                report.skipped[t.label] = BUDGET
                continue
            t0 = time.monotonic()
            threads = torch.get_num_threads()
            if min(BATCH_ROWS, len(x)) * t.inputs * t.outputs // t.groups < SMALL_STEP:
                torch.set_num_threads(1)  # a step this small mostly waits on the other threads (tests: 7x faster on a busy 2-core machine)
            try:
                why = _learn(t, torch.from_numpy(x), torch.from_numpy(y), iterations, deadline, gen, report)
            finally:
                torch.set_num_threads(threads)
            del x, y
            report.layer_seconds[t.label] = time.monotonic() - t0
            if why:
                report.skipped[t.label] = why
        del data


def _bytes(t: Layer) -> int:
    return t.rows * (t.inputs + t.outputs) * 4


# rows ---------------------------------------------------------------------------------------------------------------

def _pads(t: Layer, spatial: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) for a 2-D (or lifted 1-D) Conv on an input of ``spatial`` size."""
    if t.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for size, k, s, d in zip(spatial, t.kernel, t.strides, t.dilations):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            out.append((total // 2, total - total // 2) if t.auto_pad == "SAME_UPPER" else (total - total // 2, total // 2))
        return out[0][0], out[1][0], out[0][1], out[1][1]
    if t.auto_pad == "VALID":
        return 0, 0, 0, 0
    return t.pads


def _patches(t: Layer, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` receptive-field patches (C * kh * kw each, channel-major like the weight) of one sample ``x`` (C, H, W) at random output positions."""
    top, left, bottom, right = _pads(t, x.shape[1:])
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = t.kernel, t.strides, t.dilations
    ho, wo = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        return np.zeros((0, t.inputs), np.float32)
    pos = rng.choice(ho * wo, size=min(count, ho * wo), replace=False)
    ih = (pos // wo)[:, None] * sh + np.arange(kh)[None, :] * dh
    iw = (pos % wo)[:, None] * sw + np.arange(kw)[None, :] * dw
    return xp[:, ih[:, :, None], iw[:, None, :]].transpose(1, 0, 2, 3).reshape(len(pos), -1)


def _rows(t: Layer, x: np.ndarray, per_sample: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Rows of one batch of the layer's input, ``per_sample`` at most from each sample."""
    if t.op == "Conv":
        x = x[:, :, None, :] if t.conv1d else x
        return [_patches(t, s, per_sample, rng) for s in x]
    if t.op == "Gemm":
        return [x.T if t.trans_a else x]
    if x.ndim <= 2:
        return [x.reshape(-1, t.inputs)]
    out = []
    for s in x:
        r = s.reshape(-1, t.inputs)
        out.append(r[rng.choice(len(r), size=min(per_sample, len(r)), replace=False)])
    return out


def _collect(float_model: onnx.ModelProto, chunk: list[Layer], batches: Callable[[], Iterator[Feeds]], samples: int,
             rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer -> (input rows as the quantized side reads them, float output rows), from one streamed run of the float model over ``samples`` samples."""
    import torch

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    graph_inputs = {i.name for i in model.graph.input}
    wanted = sorted({t.x for t in chunk} - graph_inputs)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in wanted)
    session = make_session(model) if wanted else None
    xs = {t.label: np.empty((t.rows, t.inputs), np.float32) for t in chunk}
    y = {t.label: np.empty((t.rows, t.outputs), np.float32) for t in chunk}
    filled = dict.fromkeys(xs, 0)
    weights = {t.label: torch.from_numpy(t.float_matrix()) for t in chunk}
    biases = {t.label: None if t.bias_float is None else torch.from_numpy(t.bias_float) for t in chunk}
    seen = 0
    for feeds in batches():
        values = {**feeds, **(run_session(session, feeds) if session else {})}
        for t in chunk:
            per_sample = -(-t.rows // samples)
            for r in _rows(t, np.asarray(values[t.x], np.float32), per_sample, rng):
                n = min(len(r), t.rows - filled[t.label])
                if n <= 0:
                    break
                r = torch.from_numpy(np.ascontiguousarray(r[:n], np.float32))
                at = filled[t.label]
                y[t.label][at:at + n] = _output(t, r, weights[t.label], biases[t.label]).numpy()
                xs[t.label][at:at + n] = _quantize(t, r).numpy()
                filled[t.label] += n
        first = next(iter(feeds.values()), None)
        seen += int(first.shape[0]) if first is not None and np.ndim(first) else 1
        if seen >= samples:
            break
    return {k: (xs[k][:filled[k]], y[k][:filled[k]]) for k in xs}


# optimization -------------------------------------------------------------------------------------------------------

def _quantize(t: Layer, x: Any) -> Any:
    import torch

    if t.x_scale is None:
        return x
    return torch.clamp(torch.round(x / t.x_scale), -128, 127) * t.x_scale


def _output(t: Layer, x: Any, w: Any, bias: Any) -> Any:
    """The layer on rows ``x`` (rows, groups * K) with the weight ``w`` in matrix form (groups, outputs / groups, K): then bias and activation."""
    import torch

    g, og, k = w.shape
    if g == 1:
        y = x @ w[0].T
    elif og == 1:
        y = (x.view(-1, g, k) * w[:, 0, :]).sum(-1)
    else:
        y = torch.einsum("rgk,gok->rgo", x.view(-1, g, k), w).reshape(-1, g * og)
    if t.alpha != 1.0:
        y = y * t.alpha
    if bias is not None:
        y = y + bias
    return y if t.act is None else torch.clamp(y, t.act[0], t.act[1])


def _learn(t: Layer, x: Any, y: Any, iterations: int, deadline: float, gen: Any, report: AdaroundReport) -> str | None:
    """Optimize the rounding of one layer on its rows and write the result; a reason when it does not."""
    import torch

    n = len(x)
    if n < 2:
        return "too few rows of its input were collected"
    held = max(1, int(n * HOLDOUT))
    xc, yc = x[n - held:], y[n - held:]  # the rows of the last samples: held out
    order = torch.randperm(n - held, generator=gen)
    xt, yt = x[order], y[order]
    size = min(BATCH_ROWS, len(xt))
    steps = len(xt) // size
    bias = None if t.bias_quant is None else torch.from_numpy(t.bias_quant)
    scale = torch.from_numpy(t.scale_matrix())
    ratio = torch.from_numpy(t.float_matrix()) / scale
    floor = torch.floor(ratio)
    nearest = torch.from_numpy(t.int8_matrix().astype(np.float32))
    v = (-torch.log((ZETA - GAMMA) / (ratio - floor - GAMMA) - 1)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=LR)
    warm = int(iterations * WARM)
    t0 = time.monotonic()
    for i in range(iterations):
        at = (i % steps) * size
        h = torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)
        w = torch.clamp(floor + h, -127, 127) * scale
        loss = ((_output(t, xt[at:at + size], w, bias) - yt[at:at + size]) ** 2).sum(1).mean()
        if i >= warm:
            rel = (i - warm) / max(iterations - warm, 1)
            beta = BETA[1] + 0.5 * (BETA[0] - BETA[1]) * (1 + math.cos(rel * math.pi))
            loss = loss + REG * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        now = time.monotonic()
        if now > deadline or (i == 19 and now + (now - t0) / 20 * (iterations - 20) > deadline):
            return f"{BUDGET} (its {iterations} iterations would end past it)"
    with torch.no_grad():
        hard = torch.clamp(floor + (v >= 0).float(), -127, 127)
        before = float(((_output(t, xc, nearest * scale, bias) - yc) ** 2).mean())
        after = float(((_output(t, xc, hard * scale, bias) - yc) ** 2).mean())
    if not after < before:
        report.done[t.label] = (before, before, 0.0)
        report.kept_nearest.append(t.label)
        return None
    report.done[t.label] = (before, after, float((hard != nearest).float().mean()))
    values = to_layout(t, hard.numpy()).astype(np.int8)
    t.int8.CopyFrom(numpy_helper.from_array(values, t.int8.name))
    return None
