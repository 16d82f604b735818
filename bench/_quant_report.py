"""The report of bench/bench_quant.py: its tables (speed, accuracy, fusion, size; calibration cost) and the
issue-4 targets, printed from the measured contenders."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

if TYPE_CHECKING:
    from bench_quant import Contender, Run


def fmt_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(out)


def speed(ref_ms: float, ms: float) -> str:
    return f"{ref_ms / ms:.2f}x"


def print_report(contenders: list[Contender], cost512: list[tuple[str, str, Run]], ref: np.ndarray, n_eval: int, pre_run: Run, *,
                 threads: int, seed: int, with_512: bool, commit: str, t_start: float, work: Path) -> None:
    """Print the tables and the targets (``contenders[0]`` is fp32; ``ref`` its logits on the ``n_eval`` evaluation inputs)."""
    fp32 = contenders[0]
    ours_ref = {c.calibrator: c for c in contenders if c.kind == "ours" and "-b onnx" not in c.name}
    probs = np.exp(ref - ref.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    top2 = np.sort(probs, 1)[:, -2:]
    ambiguous = float(np.mean(top2[:, 1] - top2[:, 0] < 0.05))

    print(f"\nEfficientNet-Lite0 (ImageNet weights), ORT {ort.__version__} CPU, {threads} intra-op threads, spinning off; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; seed {seed}")
    print(f"evaluation: {n_eval} crops of photos not used for calibration; fp32 top-2 margin < 0.05 on {ambiguous:.0%} of them")
    print("speed = reference median / this median (higher is faster); x ours = against ours with the same calibrator (-b ort)\n")
    head = ["contender", "b1 ms", "x fp32", "x ours", "b8 ms", "x fp32", "x ours", "top1 agree", "cosine", "int8 convs (ORT-optimized graph)", "MB"]
    rows = []
    for c in contenders:
        o = ours_ref.get(c.calibrator)
        rows.append([
            c.name,
            f"{c.ms[1]:.2f}", speed(fp32.ms[1], c.ms[1]), speed(o.ms[1], c.ms[1]) if o else "-",
            f"{c.ms[8]:.2f}", speed(fp32.ms[8], c.ms[8]), speed(o.ms[8], c.ms[8]) if o else "-",
            f"{c.agree:.3f}", f"{c.cosine:.4f}", c.fused, f"{c.path.stat().st_size / 1e6:.2f}",
        ])
    print(fmt_table(head, rows))

    print(f"\ncalibration cost: each run in its own process (wall = the whole command; ORT's rows exclude quant_pre_process, "
          f"run once: {pre_run.wall_s:.1f}s, {pre_run.rss_mib:.0f} MiB); x ours = RSS against ours with the same calibrator and samples\n")
    cost_rows: list[tuple[str, str, int, Run]] = [(c.name, c.calibrator, 64, c.calib) for c in contenders if c.calib is not None]
    cost_rows += [(name, calibrator, 512, run) for name, calibrator, run in cost512]
    ours_cost = {(cal_name, n): run for name, cal_name, n, run in cost_rows if name == f"ours {cal_name}"}
    rows = []
    for name, calibrator, n, run in cost_rows:
        o = ours_cost.get((calibrator, n))
        rss = f"{run.rss_mib:.0f}" if run.ok else f"> {run.rss_mib:.0f}"
        rows.append([name, str(n), f"{run.wall_s:.1f}", f"{run.wall_s / o.wall_s:.2f}x" if o and run.ok else "-", rss,
                     (f"{run.rss_mib / o.rss_mib:.2f}x" if run.ok else f"> {run.rss_mib / o.rss_mib:.1f}x") if o else "-", "" if run.ok else f"{run.why()} after {run.wall_s:.0f}s"])
    print(fmt_table(["calibration", "samples", "wall s", "x ours", "peak RSS MiB", "x ours", "note"], rows))

    # ---------------- targets (issue 4)
    print("\ntargets (issue 4):")
    fastest_ort = min((c for c in contenders if c.kind == "ort"), key=lambda c: c.ms[8])
    best_ours = max((c for c in contenders if c.kind == "ours"), key=lambda c: fp32.ms[8] / c.ms[8])
    print(f"  speed at batch 8 >= 1.5x fp32: best ours ({best_ours.name}) {fp32.ms[8] / best_ours.ms[8]:.2f}x -> {'met' if fp32.ms[8] / best_ours.ms[8] >= 1.5 else 'MISSED'}")
    print(f"  speed at batch 8 >= 1.0x ORT's fastest ({fastest_ort.name}, {fastest_ort.ms[8]:.1f} ms): {fastest_ort.ms[8] / best_ours.ms[8]:.2f}x -> {'met' if best_ours.ms[8] <= fastest_ort.ms[8] else 'MISSED'}")
    for c in (c for c in contenders if c.kind == "ours"):
        ok = c.agree >= 0.90 and c.cosine >= 0.985
        print(f"  {c.name}: top-1 agreement {c.agree:.3f} (>= 0.90), cosine {c.cosine:.4f} (>= 0.985) -> {'met' if ok else 'MISSED'}")
    if with_512:
        ort_entropy = next(c.calib for c in contenders if c.name == "ort-s8 entropy")
        ours64, ours512 = ours_cost[("entropy", 64)], ours_cost[("entropy", 512)]
        print(f"  entropy calibration peak RSS <= 0.25x ORT's (64 samples): {ours64.rss_mib / ort_entropy.rss_mib:.2f}x -> {'met' if ours64.rss_mib <= 0.25 * ort_entropy.rss_mib else 'MISSED'}; "
              f"64 -> 512 samples: {ours64.rss_mib:.0f} -> {ours512.rss_mib:.0f} MiB ({ours512.rss_mib / ours64.rss_mib:.2f}x)")
    print(f"\ncommit {commit}; versions: onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; total {time.perf_counter() - t_start:.0f}s; files in {work}")
