"""Calibrators: from a tensor's streamed statistics to the ``amax`` of its int8 range.

- ``minmax``: the largest |x| seen.
- ``percentile``: the ``p``-th percentile of |x| (from the histogram; default 99.99).
- ``entropy``: TensorRT's threshold search (GTC 2017, "8-bit inference with
  TensorRT"): for every candidate i >= 128 bins of the |x| histogram, P is the
  first i bins with everything beyond folded into bin i-1, Q is those i bins
  (without the outliers) merged into 128 levels and expanded back over the bins
  that were non-zero; the threshold is the right edge of the i with the least
  KL(P || Q). Computed exactly for all candidates at once from cumulative sums.
  Bin 0 takes bin 1's count first (as NVIDIA's pytorch-quantization does): the
  spike of exact zeros after a ReLU would otherwise dominate level 0 and pull
  the threshold far down.
- ``mse``: the threshold whose quantization (step threshold/127, clipping
  beyond) has the least mean squared error over the histogram (bin centres).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from converter.calibration.stats import TensorStats

Method = Literal["minmax", "percentile", "entropy", "mse"]
METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")
QUANT_LEVELS = 128
"""|x| levels of symmetric int8 (0..127): TensorRT's number of quantized bins."""


@dataclass(frozen=True)
class Calibrator:
    method: Method = "entropy"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibrator '{self.method}' is not one of {', '.join(METHODS)}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")

    @property
    def needs_histogram(self) -> bool:
        return self.method != "minmax"

    @property
    def label(self) -> str:
        """The method as the cache records it (``percentile(99.99)`` carries its p)."""
        return f"percentile({self.percentile:g})" if self.method == "percentile" else self.method

    def amax(self, stats: TensorStats) -> float:
        if self.method == "minmax" or stats.limit == 0.0:
            return stats.amax
        if self.method == "percentile":
            return percentile_amax(stats, self.percentile)
        if self.method == "entropy":
            return entropy_amax(stats)
        return mse_amax(stats)


def _last_nonzero(hist: np.ndarray) -> int:
    nz = np.flatnonzero(hist)
    return int(nz[-1]) if nz.size else -1


def percentile_amax(stats: TensorStats, p: float) -> float:
    hist = stats.hist
    total = int(hist.sum())
    if total == 0:
        return 0.0
    cdf = np.cumsum(hist) / total
    idx = int(np.searchsorted(cdf, p / 100.0 - 1e-12))
    return float(min(stats.edges()[min(idx, hist.size - 1) + 1], stats.amax))


def _xlogx(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos])
    return out


def entropy_divergences(hist: np.ndarray, candidates: np.ndarray, levels: int = QUANT_LEVELS) -> np.ndarray:
    """KL(P || Q) of TensorRT's search for each candidate bin count in ``candidates`` (each >= ``levels``)."""
    h = hist.astype(np.float64)
    total = h.sum()
    c = np.concatenate([[0.0], np.cumsum(h)])
    nz = np.concatenate([[0.0], np.cumsum(h > 0)])
    hl = np.concatenate([[0.0], np.cumsum(_xlogx(h))])
    i = candidates.astype(np.int64)[:, None]
    j = np.arange(levels + 1, dtype=np.int64)[None, :]
    bounds = (j * i) // levels  # [n_candidates, levels + 1]: reference bins of each quantized level
    q_total = c[bounds[:, 1:]] - c[bounds[:, :-1]]
    q_nz = nz[bounds[:, 1:]] - nz[bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_level = np.where(q_total > 0, q_total * np.log(q_total / np.maximum(q_nz, 1)), 0.0)
    i1 = candidates.astype(np.int64)
    last = h[i1 - 1]
    outliers = total - c[i1]
    q_last = np.where(last > 0, q_total[:, -1] / np.maximum(q_nz[:, -1], 1), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_log_q = per_level.sum(axis=1) + np.where(outliers > 0, outliers * np.log(q_last), 0.0)
    p_log_p = hl[i1 - 1] + _xlogx(last + outliers)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty candidates give -inf/NaN, ranked last below
        kl = (p_log_p - p_log_q) / total + np.log(c[i1] / total)
    kl[(outliers > 0) & (last == 0)] = np.inf
    return kl


def entropy_amax(stats: TensorStats, levels: int = QUANT_LEVELS) -> float:
    hist = stats.hist.copy()
    hist[0] = hist[1]
    last = _last_nonzero(hist)
    if last + 1 <= levels:  # the data fits in fewer bins than levels: nothing to clip
        return stats.amax
    candidates = np.arange(levels, last + 2)
    kl = entropy_divergences(hist, candidates, levels)
    best = int(candidates[int(np.argmin(kl))])
    return float(min(best * stats.bin_width, stats.amax))


def quantization_mse(hist: np.ndarray, width: float, thresholds: np.ndarray) -> np.ndarray:
    """Mean squared error of symmetric int8 at each threshold, values taken at bin centres."""
    centers = (np.arange(hist.size) + 0.5) * width
    weights = hist.astype(np.float64)
    total = weights.sum()
    out = np.empty(thresholds.size)
    for start in range(0, thresholds.size, 256):  # bounded temporaries: 256 x bins
        t = thresholds[start : start + 256, None]
        step = t / 127.0
        inside = np.round(centers[None, :] / step) * step
        err = np.where(centers[None, :] <= t, centers[None, :] - inside, centers[None, :] - t)
        out[start : start + 256] = (err * err) @ weights / total
    return out


def mse_amax(stats: TensorStats, start_bin: int = QUANT_LEVELS) -> float:
    hist = stats.hist
    last = _last_nonzero(hist)
    if last + 1 <= start_bin:
        return stats.amax
    candidates = np.arange(start_bin, last + 2)
    errors = quantization_mse(hist, stats.bin_width, candidates * stats.bin_width)
    best = int(candidates[int(np.argmin(errors))])
    return float(min(best * stats.bin_width, stats.amax))


def scale_of(amax: float) -> float:
    """Symmetric int8 scale: amax / 127 (a positive float32)."""
    if not math.isfinite(amax) or amax < 0:
        raise ValueError(f"amax must be finite and >= 0, got {amax}")
    return float(np.float32(amax / 127.0))
